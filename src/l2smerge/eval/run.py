"""`evaluate`: benchmarks -> prompts -> backend -> grading -> results.jsonl -> summary.json;
free-form tasks (`tasks=`) -> their messages -> backend -> coverage judge (eval/freeform.py).

A run is identified by its model's content and its protocol (eval/identity.py); rerunning with
the same identity resumes from results.jsonl (items already there are not generated again), a
different one is refused (a task item whose judge failed is judged again from its response).
run.json is written once the backend is ready, so an eval that fails before its first result
(a typo, a model that does not load) never blocks the corrected rerun.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from l2smerge.eval.backends import Backend, Generation, Request, check_available, make_backend
from l2smerge.eval.backends.base import load_tokenizer
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
from l2smerge.eval.grading import GRADER_VERSION, grade
from l2smerge.eval.identity import model_identity
from l2smerge.eval.metrics import summarize
from l2smerge.eval.progress import EvalProgress, quiet_transformers
from l2smerge.eval.prompts import TOOLKIT_STOP, PromptBuilder, resolve_prompt_name
from l2smerge.eval.reflection import count_reflections
from l2smerge.eval.runs import RunDir
from l2smerge.eval.session import session_record
from l2smerge.util.device import check_device
from l2smerge.util.errors import L2SError
from l2smerge.util.lock import holds_lock

# The study's generation limits: System 2 and merged models vs System 1 (few-shot).
DEFAULT_MAX_TOKENS = 10240
DEFAULT_MAX_TOKENS_FEWSHOT = 8192


@holds_lock("out_dir")  # one process per run directory
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
    quiet: bool = False,
    allow_pickle: bool = False,
    log_prompts: bool = False,
    tasks: Sequence[str | Path] | None = None,
    judge: str = "lexical",
    judge_options: dict[str, Any] | None = None,
    **backend_opts: Any,
) -> dict[str, Any]:
    """Evaluate `model` on `benches` into `out_dir`; returns what it writes to summary.json.

    `benches`: names or "gsm8k,math500"; with backend="replay", None means every bench in the
    responses file. `limit`: the first N items of each bench. `prompt`: a name of
    eval/prompts.py or a template file ("auto": each benchmark's default). `quiet`: no notes.
    `log_prompts`: also write each benchmark item's rendered prompt to prompts.jsonl.
    `tasks`: free-form task files (docs/tasks.md), judged by `judge` ("lexical" or "llm", with
    `judge_options` such as url and model). Rerunning with the same model and protocol
    resumes: each item ends up in results.jsonl exactly once.
    """
    model = str(model)
    check_available(backend)
    if limit is not None and limit < 1:
        raise L2SError(f"--limit must be at least 1, got {limit}")
    notes = Console(stderr=True, quiet=quiet, soft_wrap=True)
    tokenizer = str(tokenizer) if tokenizer else None
    options: dict[str, Any] = {**backend_opts, "device": device, "batch_size": batch_size}

    task_items = load_task_items(tasks, limit)
    replay = None
    if backend == "replay":
        replay = make_backend(backend, model, responses=responses, tokenizer=tokenizer)
        items = _replay_items(replay, benches, data_dir, limit, task_items)
        task_items = _replayed_task_items(replay, task_items, limit)
        replay.check_token_counts([it.key for it in items] + [it.key for it in task_items])
    else:
        if benches is None and not task_items:
            raise L2SError("no benchmark given; pass --bench gsm8k,math500,... or --task FILE")
        names = parse_bench_names(benches) if benches is not None else []
        items = [it for b in names for it in load_items(b, data_dir, limit)]
    bench_order = list(dict.fromkeys([it.bench for it in items] + [t.task for t in task_items]))

    generated = backend != "replay"  # replayed responses were made under an unknown protocol
    item_benches = dict.fromkeys(it.bench for it in items)
    defaults = [BENCHMARKS[b].default_prompt for b in item_benches] if generated else []
    prompt_name = resolve_prompt_name(prompt, defaults)
    PromptBuilder(prompt_name)  # a bad template file fails before any model loads
    if max_tokens is None:
        fewshot = prompt_name == "fewshot"
        max_tokens = DEFAULT_MAX_TOKENS_FEWSHOT if fewshot else DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise L2SError(f"--max-tokens must be at least 1, got {max_tokens}")
    if batch_size is not None and batch_size < 1:
        raise L2SError(f"--batch-size must be at least 1, got {batch_size}")
    if device is not None:
        check_device(device)

    model_id = model_identity(model, backend, allow_pickle=allow_pickle, responses=responses)
    with quiet_transformers(show_bars=progress and not quiet):
        if replay is not None:
            loaded_tokenizer = replay.tokenizer
        elif backend in ("hf", "vllm"):
            loaded_tokenizer = load_tokenizer(tokenizer or model)
        else:
            loaded_tokenizer = load_tokenizer(tokenizer) if tokenizer else None
    builder = PromptBuilder(prompt_name, loaded_tokenizer if generated else None)
    # a task item's prompt is its own messages (through the chat template), with the stops
    prompted = generated and bool(items)
    coverage_judge = open_judge(judge, judge_options) if task_items else None
    identity = {
        "model": model_id,
        "prompt": builder.name if prompted else None,
        "prompt_sha256": builder.sha256 if prompted else None,
        "stop": (list(builder.stop) if prompted else list(TOOLKIT_STOP)) if generated else None,
        "max_tokens": max_tokens if generated else None,
        "grader_version": GRADER_VERSION,
        "judge": coverage_judge.info() if coverage_judge is not None else None,
    }

    run = RunDir(out_dir)
    engine: Backend | None = replay
    try:
        done = run.load_results()
        run.check_identity(identity, has_results=bool(done))
        todo = [it for it in items if it.key not in done]
        task_todo = [it for it in task_items if it.key not in done]
        rejudge = [it for it in task_items if it.key in done and needs_judging(done[it.key])]
        limit_tokens = max_tokens
        if todo or task_todo:
            if engine is None:
                with quiet_transformers(show_bars=progress and not quiet):
                    engine = make_backend(backend, model, tokenizer=loaded_tokenizer, **options)
            _check_loaded(engine, model)
            limit_tokens = _cap_to_context(engine, model, max_tokens, notes)
            session = session_record(
                backend,
                {"tokenizer": tokenizer, "responses": responses, **options},
                items=len(todo) + len(task_todo),
                stop_token_ids=list(engine.stop_ids),
                context_length=engine.context_length,
                bos_token=_bos_token(loaded_tokenizer) if builder.name != "chat" else None,
            )
            template = builder.template if prompted else None
            run.write_info(identity, session, model=model, prompt_template=template)
            with quiet_transformers():
                if todo:
                    _generate_and_grade(
                        engine,
                        builder,
                        todo,
                        limit_tokens,
                        run,
                        done,
                        progress and not quiet,
                        log_prompts,
                    )
        if task_todo or rejudge:
            with quiet_transformers():
                generate_and_judge(
                    engine,
                    coverage_judge,
                    task_todo,
                    rejudge,
                    limit_tokens,
                    run,
                    done,
                    progress and not quiet,
                )
    finally:
        run.close()
        if engine is not None:
            engine.close()
        if coverage_judge is not None:
            coverage_judge.close()

    records = [done[it.key] for it in items] + [done[it.key] for it in task_items]
    tokenizer_name = tokenizer or (model if backend in ("hf", "vllm") else None)
    summary = summarize(
        model,
        records,
        bench_order,
        backend=backend,
        prompt=identity["prompt"],
        max_tokens=identity["max_tokens"],
        grader_version=GRADER_VERSION,
        tokenizer=tokenizer_name,
    )
    if coverage_judge is not None:
        add_coverage(summary, records, coverage_judge)
    run.write_summary(summary)
    return summary


def _check_loaded(engine: Any, model: str) -> None:
    """A checkpoint that lacks weights would be evaluated with random ones: refuse it."""
    missing = getattr(engine, "missing_weights", None)
    if missing:
        raise L2SError(
            f"model {model!r}: {len(missing)} weight(s) missing from the checkpoint (first: "
            f"{missing[0]}); transformers would initialise them at random"
        )


def _cap_to_context(engine: Any, model: str, max_tokens: int, notes: Console) -> int:
    """`max_tokens`, or the model's context when that is smaller (said once). Each batch then
    gets what its prompt leaves of the context, as vLLM does."""
    context = engine.context_length
    if context is None or max_tokens <= context:
        return max_tokens
    notes.print(
        f"note: --max-tokens {max_tokens} is beyond the context of {escape(model)} "
        f"({context} tokens, prompt included); responses stop at the context",
        highlight=False,
    )
    return context


def _bos_token(tokenizer: Any | None) -> str | None:
    """The token a raw prompt starts with when the tokenizer adds one (R1's BOS), else None."""
    if tokenizer is None or tokenizer.bos_token_id is None:
        return None
    ids = tokenizer.encode("x", add_special_tokens=True)
    return tokenizer.bos_token if ids and ids[0] == tokenizer.bos_token_id else None


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
    verdict = grade(extracted, item)
    reflections = count_reflections(generation.response)
    record: dict[str, Any] = {"bench": item.bench, "id": item.id}
    if item.level is not None:
        record["level"] = item.level
    record.update(
        gold=item.gold,
        extracted=extracted,
        correct=verdict.correct,
        tokens=generation.tokens,
        truncated=generation.truncated,
        reflective=reflections > 0,
        reflections=reflections,
    )
    if verdict.ungradable:
        record["ungradable"] = verdict.ungradable
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
    log_prompts: bool,
) -> None:
    requests = [Request(it.key, builder(it.question, it.gold)) for it in todo]
    with EvalProgress(len(todo), enabled=progress) as bar:
        for index, generation in engine.generate(requests, max_tokens):
            item = todo[index]
            record = make_record(item, generation)
            if log_prompts:
                prompt = requests[index].prompt
                row: dict[str, Any] = {"bench": item.bench, "id": item.id, "prompt": prompt.text}
                if prompt.messages is not None:
                    row["messages"] = list(prompt.messages)
                run.append_prompt(row)
            run.append(record)
            done[item.key] = record
            bar.advance(generation.tokens or 0)


__all__ = [
    "BENCHMARKS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS_FEWSHOT",
    "evaluate",
    "make_record",
]
