"""`evaluate`: benchmarks -> prompts -> backend -> grading -> results.jsonl -> summary.json;
free-form tasks (`tasks=`) -> their messages -> backend -> coverage judge (eval/freeform.py).
Resumes from results.jsonl: items already there are not generated again (a task item whose
judge failed is judged again from its response)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l2smerge.eval.backends import BACKENDS, Backend, Generation, Request, make_backend
from l2smerge.eval.benchmarks import BENCHMARKS, Item, load_items, parse_bench_names
from l2smerge.eval.extraction import extract_answer
from l2smerge.eval.freeform import (
    add_coverage,
    generate_and_judge,
    id_text,
    load_task_items,
    needs_judging,
    open_judge,
)
from l2smerge.eval.grading import grade
from l2smerge.eval.metrics import summarize
from l2smerge.eval.progress import EvalProgress
from l2smerge.eval.prompts import PromptBuilder
from l2smerge.eval.reflection import count_reflections
from l2smerge.eval.runs import RunDir
from l2smerge.util.errors import L2SError

# The study's generation limits: System 2 and merged models (CoT) vs System 1 (few-shot).
DEFAULT_MAX_TOKENS = 10240
DEFAULT_MAX_TOKENS_FEWSHOT = 8192


def evaluate(
    model: str | Path,
    benches: str | Sequence[str] | None,
    *,
    out_dir: str | Path,
    backend: str = "hf",
    data_dir: str | Path | None = None,
    max_tokens: int | None = None,
    limit: int | None = None,
    prompt: str = "auto",
    batch_size: int | None = None,
    responses: str | Path | None = None,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    tasks: Sequence[str | Path] | None = None,
    judge: str = "lexical",
    judge_options: dict[str, Any] | None = None,
    **backend_opts: Any,
) -> dict[str, Any]:
    """Evaluate `model` on `benches` into `out_dir`; returns what it writes to summary.json.

    `benches`: names or "gsm8k,math500"; with backend="replay", None means every bench in the
    responses file. `limit`: the first N items of each bench. Rerunning with the same
    arguments resumes: each item ends up in results.jsonl exactly once.
    `tasks`: free-form task files (docs/tasks.md), judged by `judge` ("lexical" or "llm",
    with `judge_options` such as url and model).
    """
    model = str(model)
    if backend not in BACKENDS:
        raise L2SError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if limit is not None and limit < 1:
        raise L2SError(f"--limit must be at least 1, got {limit}")
    builder = PromptBuilder(prompt)  # validates a template file before any model loads
    if max_tokens is None:
        fewshot = builder.choice == "fewshot"
        max_tokens = DEFAULT_MAX_TOKENS_FEWSHOT if fewshot else DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise L2SError(f"--max-tokens must be at least 1, got {max_tokens}")
    options: dict[str, Any] = dict(backend_opts)
    options.update(
        tokenizer=str(tokenizer) if tokenizer else None,
        device=device,
        batch_size=batch_size,
        responses=responses,
    )

    task_items = load_task_items(tasks, limit)
    engine: Backend | None = None
    if backend == "replay":
        engine = make_backend(backend, model, **options)
        items = _replay_items(engine, benches, data_dir, limit, task_items)
        task_items = _replayed_task_items(engine, task_items, limit)
    else:
        if benches is None and not task_items:
            raise L2SError("no benchmark given; pass --bench gsm8k,math500,... or --task FILE")
        names = parse_bench_names(benches) if benches is not None else []
        items = [it for b in names for it in load_items(b, data_dir, limit)]
    bench_order = list(dict.fromkeys([it.bench for it in items] + [t.task for t in task_items]))

    prompt_name = None if backend == "replay" else builder.name  # replay prompts nothing
    coverage_judge = open_judge(judge, judge_options) if task_items else None
    run = RunDir(out_dir)
    info = {
        "model": model,
        "backend": backend,
        "prompt": prompt_name,
        "max_tokens": max_tokens,
        "responses": str(Path(responses).resolve()) if responses else None,
    }
    if coverage_judge is not None:
        info["judge"] = coverage_judge.info()
    try:
        run.check_info(info)
        done = run.load_results()
        todo = [it for it in items if it.key not in done]
        task_todo = [it for it in task_items if it.key not in done]
        rejudge = [it for it in task_items if it.key in done and needs_judging(done[it.key])]
        if (todo or task_todo) and engine is None:
            engine = make_backend(backend, model, **options)
        if todo:
            builder.tokenizer = engine.tokenizer
            _generate_and_grade(engine, builder, todo, max_tokens, run, done, progress)
        if task_todo or rejudge:
            generate_and_judge(
                engine, coverage_judge, task_todo, rejudge, max_tokens, run, done, progress
            )
    finally:
        run.close()
        if engine is not None:
            engine.close()
        if coverage_judge is not None:
            coverage_judge.close()

    records = [done[it.key] for it in items] + [done[it.key] for it in task_items]
    tokenizer_name = str(tokenizer) if tokenizer else (model if backend in ("hf", "vllm") else None)
    summary = summarize(
        model,
        records,
        bench_order,
        backend=backend,
        prompt=prompt_name,
        max_tokens=max_tokens,
        tokenizer=tokenizer_name,
    )
    if coverage_judge is not None:
        add_coverage(summary, records, coverage_judge)
    run.write_summary(summary)
    return summary


def _replayed_task_items(engine: Any, task_items: list[Any], limit: int | None) -> list[Any]:
    """The task items the replay file has responses for (ids compared as text), in file
    order; `limit`: the first N of each task."""
    present = {id_text(key) for key in engine.keys()}
    known = {id_text(item.key) for item in task_items}
    tasks = {item.task for item in task_items}
    for key in engine.keys():
        if key[0] in tasks and id_text(key) not in known:
            raise L2SError(f"{engine.where(key)}: task {key[0]!r} has no item with id {key[1]!r}")
    cap = limit if limit is not None else len(task_items)
    chosen: list[Any] = []
    per_task: dict[str, int] = {}
    for item in task_items:
        if id_text(item.key) in present and per_task.get(item.task, 0) < cap:
            chosen.append(item)
            per_task[item.task] = per_task.get(item.task, 0) + 1
    for task in dict.fromkeys(it.task for it in task_items):
        if task not in per_task:
            raise L2SError(f"replay file {engine.path} has no responses for task {task!r}")
    return chosen


def _replay_items(
    engine: Any,
    benches: str | Sequence[str] | None,
    data_dir: Any,
    limit: int | None,
    task_items: Sequence[Any] = (),
) -> list[Item]:
    """The benchmark items the replay file has responses for, in bench and id order."""
    tasks = {it.task for it in task_items}
    keys = [key for key in engine.keys() if key[0] not in tasks]
    if benches is None and tasks and not keys:
        return []
    strangers = [b for b, _ in keys if b not in BENCHMARKS]
    if benches is None and strangers:
        raise L2SError(
            f"replay file {engine.path} has responses for {strangers[0]!r}, which is neither "
            f"a benchmark nor a task given with --task; add --task {strangers[0]}.jsonl"
        )
    names = (
        parse_bench_names(benches)
        if benches is not None
        else parse_bench_names(list(dict.fromkeys(b for b, _ in keys)))
    )
    items: list[Item] = []
    for bench in names:
        for b, i in keys:
            if b == bench and not isinstance(i, int):
                raise L2SError(
                    f"{engine.where((b, i))}: field 'id' must be a int ({bench} ids are "
                    "0-based line numbers)"
                )
        wanted = sorted(i for b, i in keys if b == bench)
        if not wanted:
            raise L2SError(f"replay file {engine.path} has no responses for bench {bench!r}")
        available = load_items(bench, data_dir)
        for i in wanted:
            if i < 0 or i >= len(available):
                raise L2SError(
                    f"{engine.where((bench, i))}: {bench} has no item id {i} "
                    f"(ids are 0-based line numbers, 0..{len(available) - 1})"
                )
        chosen = wanted[:limit] if limit is not None else wanted
        items.extend(available[i] for i in chosen)
    return items


def make_record(item: Item, generation: Generation) -> dict[str, Any]:
    """One results.jsonl line."""
    extracted = extract_answer(generation.response)
    reflections = count_reflections(generation.response)
    record: dict[str, Any] = {"bench": item.bench, "id": item.id}
    if item.level is not None:
        record["level"] = item.level
    record.update(
        gold=item.gold,
        extracted=extracted,
        correct=grade(extracted, item),
        tokens=generation.tokens,
        truncated=generation.truncated,
        reflective=reflections > 0,
        reflections=reflections,
    )
    for key, value in item.meta.items():
        record.setdefault(key, value)
    record["response"] = generation.response
    return record


def _generate_and_grade(
    engine: Backend,
    builder: PromptBuilder,
    todo: list[Item],
    max_tokens: int,
    run: RunDir,
    done: dict[tuple[str, int], dict[str, Any]],
    progress: bool,
) -> None:
    requests = [Request(it.key, builder(it.question)) for it in todo]
    with EvalProgress(len(todo), enabled=progress) as bar:
        for index, generation in engine.generate(requests, max_tokens):
            item = todo[index]
            record = make_record(item, generation)
            run.append(record)
            done[item.key] = record
            bar.advance(generation.tokens or 0)


__all__ = ["BENCHMARKS", "evaluate", "make_record"]
