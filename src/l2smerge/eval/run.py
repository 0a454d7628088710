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
from dataclasses import dataclass
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
from l2smerge.eval.runs import RunDir, line_key
from l2smerge.eval.sampling import Sampling, resolve_sampling
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
    sampling: Sampling | str | dict[str, Any] | None = None,
    **backend_opts: Any,
) -> dict[str, Any]:
    """Evaluate `model` on `benches` into `out_dir`; returns what it writes to summary.json.

    `benches`: names or "gsm8k,math500"; with backend="replay", None means every bench in the
    responses file. `limit`: the first N items of each bench. `prompt`: a name of
    eval/prompts.py or a template file ("auto": each benchmark's default). `quiet`: no notes.
    `log_prompts`: also write each benchmark item's rendered prompt to prompts.jsonl.
    `tasks`: free-form task files (docs/tasks.md), judged by `judge` ("lexical" or "llm", with
    `judge_options` such as url and model). `sampling`: greedy (None, the default), a name
    of eval/sampling.py's PRESETS ("r1"), a Sampling, or a dict of its fields with an optional
    `preset`; with n samples each item gets n results lines, numbered by `sample`. Rerunning
    with the same model and protocol resumes: each item (and sample) ends up in results.jsonl
    exactly once.
    """
    model = str(model)
    sampling = _check_request(backend, limit, sampling, tasks)
    notes = Console(stderr=True, quiet=quiet, soft_wrap=True)
    tokenizer = str(tokenizer) if tokenizer else None
    options: dict[str, Any] = {**backend_opts, "device": device, "batch_size": batch_size}
    plan = _plan(
        model,
        benches,
        backend=backend,
        data_dir=data_dir,
        limit=limit,
        prompt=prompt,
        max_tokens=max_tokens,
        batch_size=batch_size,
        device=device,
        responses=responses,
        tokenizer=tokenizer,
        allow_pickle=allow_pickle,
        tasks=tasks,
        judge=judge,
        judge_options=judge_options,
        sampling=sampling,
        show_bars=progress and not quiet,
    )
    units = _units(plan.items, sampling, plan.replay)
    run = RunDir(out_dir)
    done = _run_pending(
        plan,
        units,
        run,
        model=model,
        backend=backend,
        options=options,
        tokenizer=tokenizer,
        responses=responses,
        sampling=sampling,
        notes=notes,
        progress=progress and not quiet,
        log_prompts=log_prompts,
    )
    records = [done[line_key(*it.key, s)] for it, s in units]
    records += [done[it.key] for it in plan.task_items]
    tokenizer_name = tokenizer or (model if backend in ("hf", "vllm") else None)
    summary = summarize(
        model,
        records,
        plan.bench_order,
        backend=backend,
        prompt=plan.identity["prompt"],
        max_tokens=plan.identity["max_tokens"],
        grader_version=GRADER_VERSION,
        sampling=sampling.record() if plan.generated else None,
        tokenizer=tokenizer_name,
    )
    if plan.coverage_judge is not None:
        add_coverage(summary, records, plan.coverage_judge)
    run.write_summary(summary)
    return summary


def _check_request(
    backend: str,
    limit: int | None,
    sampling: Sampling | str | dict[str, Any] | None,
    tasks: Sequence[str | Path] | None,
) -> Sampling:
    """The run's decoding, once the backend, limit and decoding are known to go together."""
    check_available(backend)
    if limit is not None and limit < 1:
        raise L2SError(f"--limit must be at least 1, got {limit}")
    resolved = resolve_sampling(sampling)
    if backend == "replay" and not resolved.greedy:
        raise L2SError(
            "--backend replay takes the responses as they are (a sampled log numbers them "
            "with `sample`); --temperature/--sampling/--samples do not apply"
        )
    if tasks and not resolved.greedy:
        raise L2SError(
            "free-form tasks (--task) are judged on one greedy response per item; evaluate "
            "them without --temperature/--sampling, in a run of their own"
        )
    return resolved


@dataclass
class _Plan:
    """What an evaluation will do, settled before any model loads: the items, the prompt, the
    limit, the run's identity (eval/identity.py) and the coverage judge for task items."""

    items: list[Item]
    task_items: list[Any]
    bench_order: list[str]
    replay: Any | None  # the replay backend, which is also where the items come from
    generated: bool  # False for replayed responses (made under an unknown protocol)
    prompted: bool  # benchmark items rendered with the run's prompt (not only task items)
    builder: PromptBuilder
    loaded_tokenizer: Any | None
    max_tokens: int
    identity: dict[str, Any]
    coverage_judge: Any | None


def _select_items(
    model: str,
    benches: str | Sequence[str] | None,
    *,
    backend: str,
    data_dir: str | Path | None,
    limit: int | None,
    responses: str | Path | None,
    tokenizer: str | None,
    tasks: Sequence[str | Path] | None,
) -> tuple[list[Item], list[Any], Any | None]:
    """The benchmark items, the task items and (for a replay) the replay backend."""
    task_items = load_task_items(tasks, limit)
    if backend != "replay":
        if benches is None and not task_items:
            raise L2SError("no benchmark given; pass --bench gsm8k,math500,... or --task FILE")
        names = parse_bench_names(benches) if benches is not None else []
        return [it for b in names for it in load_items(b, data_dir, limit)], task_items, None
    replay = make_backend(backend, model, responses=responses, tokenizer=tokenizer)
    items = _replay_items(replay, benches, data_dir, limit, task_items)
    task_items = _replayed_task_items(replay, task_items, limit)
    if replay.sampled and task_items:
        raise L2SError(
            f"replay file {replay.path} numbers its responses with `sample`; free-form "
            "tasks are judged on one response per item"
        )
    replay.check_token_counts([it.key for it in items] + [it.key for it in task_items])
    return items, task_items, replay


def _plan(
    model: str,
    benches: str | Sequence[str] | None,
    *,
    backend: str,
    data_dir: str | Path | None,
    limit: int | None,
    prompt: str,
    max_tokens: int | None,
    batch_size: int | None,
    device: str | None,
    responses: str | Path | None,
    tokenizer: str | None,
    allow_pickle: bool,
    tasks: Sequence[str | Path] | None,
    judge: str,
    judge_options: dict[str, Any] | None,
    sampling: Sampling,
    show_bars: bool,
) -> _Plan:
    items, task_items, replay = _select_items(
        model,
        benches,
        backend=backend,
        data_dir=data_dir,
        limit=limit,
        responses=responses,
        tokenizer=tokenizer,
        tasks=tasks,
    )
    bench_order = list(dict.fromkeys([it.bench for it in items] + [t.task for t in task_items]))

    generated = backend != "replay"  # replayed responses were made under an unknown protocol
    item_benches = list(dict.fromkeys(it.bench for it in items))
    prompt_name, max_tokens = resolve_prompt_and_limit(item_benches, prompt, max_tokens, generated)
    if batch_size is not None and batch_size < 1:
        raise L2SError(f"--batch-size must be at least 1, got {batch_size}")
    if device is not None:
        check_device(device)

    model_id = model_identity(model, backend, allow_pickle=allow_pickle, responses=responses)
    with quiet_transformers(show_bars=show_bars):
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
        **protocol_identity(
            builder,
            prompted=prompted,
            generated=generated,
            max_tokens=max_tokens,
            sampling=sampling,
            judge=coverage_judge.info() if coverage_judge is not None else None,
        ),
    }
    return _Plan(
        items,
        task_items,
        bench_order,
        replay,
        generated,
        prompted,
        builder,
        loaded_tokenizer,
        max_tokens,
        identity,
        coverage_judge,
    )


def _run_pending(
    plan: _Plan,
    units: list[tuple[Item, int | None]],
    run: RunDir,
    *,
    model: str,
    backend: str,
    options: dict[str, Any],
    tokenizer: str | None,
    responses: str | Path | None,
    sampling: Sampling,
    notes: Console,
    progress: bool,
    log_prompts: bool,
) -> dict[Any, dict[str, Any]]:
    """Generate and grade (or judge) what results.jsonl does not have yet; return every
    result line by key. The backend loads only when something is missing."""
    engine: Backend | None = plan.replay
    try:
        done = run.load_results()
        run.check_identity(plan.identity, has_results=bool(done))
        todo = [(it, s) for it, s in units if line_key(*it.key, s) not in done]
        task_todo = [it for it in plan.task_items if it.key not in done]
        rejudge = [it for it in plan.task_items if it.key in done and needs_judging(done[it.key])]
        limit_tokens = plan.max_tokens
        if todo or task_todo:
            if engine is None:
                with quiet_transformers(show_bars=progress):
                    engine = make_backend(
                        backend,
                        model,
                        tokenizer=plan.loaded_tokenizer,
                        sampling=sampling,
                        **options,
                    )
            _check_loaded(engine, model)
            limit_tokens = _cap_to_context(engine, model, plan.max_tokens, notes)
            session = session_record(
                backend,
                {"tokenizer": tokenizer, "responses": responses, **options},
                items=len(todo) + len(task_todo),
                stop_token_ids=list(engine.stop_ids),
                context_length=engine.context_length,
                bos_token=(
                    _bos_token(plan.loaded_tokenizer) if plan.builder.name != "chat" else None
                ),
                sampling=sampling.record() if plan.generated else None,
                batching=getattr(engine, "batching", None),  # hf: "refill" or "static"
            )
            template = plan.builder.template if plan.prompted else None
            run.write_info(plan.identity, session, model=model, prompt_template=template)
            with quiet_transformers():
                if todo:
                    _generate_and_grade(
                        engine, plan.builder, todo, limit_tokens, run, done, progress, log_prompts
                    )
        if task_todo or rejudge:
            with quiet_transformers():
                generate_and_judge(
                    engine,
                    plan.coverage_judge,
                    task_todo,
                    rejudge,
                    limit_tokens,
                    run,
                    done,
                    progress,
                )
    finally:
        run.close()
        if engine is not None:
            engine.close()
        if plan.coverage_judge is not None:
            plan.coverage_judge.close()
    return done


def resolve_prompt_and_limit(
    benches: Sequence[str], prompt: str, max_tokens: int | None, generated: bool
) -> tuple[str, int]:
    """The prompt name (`auto`: the benchmarks' default) and the new-token limit (default:
    the study's for that prompt) of a run over `benches`; a bad prompt file or limit fails
    here, before any model loads."""
    defaults = [BENCHMARKS[b].default_prompt for b in benches] if generated else []
    prompt_name = resolve_prompt_name(prompt, defaults)
    PromptBuilder(prompt_name)  # a bad template file fails before any model loads
    if max_tokens is None:
        fewshot = prompt_name == "fewshot"
        max_tokens = DEFAULT_MAX_TOKENS_FEWSHOT if fewshot else DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise L2SError(f"--max-tokens must be at least 1, got {max_tokens}")
    return prompt_name, max_tokens


def protocol_identity(
    builder: PromptBuilder,
    *,
    prompted: bool,
    generated: bool,
    max_tokens: int,
    sampling: Sampling,
    judge: dict[str, Any] | None,
) -> dict[str, Any]:
    """The protocol part of run.json's identity (eval/identity.py), the one place it is made:
    `evaluate` records it, `planned_protocol` predicts it."""
    return {
        "prompt": builder.name if prompted else None,
        "prompt_sha256": builder.sha256 if prompted else None,
        "stop": (list(builder.stop) if prompted else list(TOOLKIT_STOP)) if generated else None,
        "max_tokens": max_tokens if generated else None,
        "grader_version": GRADER_VERSION,
        "sampling": sampling.protocol() if generated else None,
        "seed": sampling.seed if generated and not sampling.greedy else None,
        "judge": judge,
    }


def planned_protocol(
    benches: str | Sequence[str] | None,
    *,
    backend: str = "hf",
    prompt: str = "auto",
    max_tokens: int | None = None,
    sampling: Sampling | str | dict[str, Any] | None = None,
    tasks: Sequence[str | Path] | None = None,
    judge: str = "lexical",
    judge_options: dict[str, Any] | None = None,
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """The protocol `evaluate` with these settings will record, without loading a model (what
    `l2smerge sweep` checks a reference run against before merging anything). `tokenizer`:
    the one the model's prompt is rendered with; without it a `chat` prompt's template bytes
    (prompt_sha256) are left unknown."""
    if backend == "replay":
        raise L2SError("planned_protocol: a replayed run's protocol is not ours to plan")
    names = parse_bench_names(benches) if benches else []
    prompt_name, limit = resolve_prompt_and_limit(names, prompt, max_tokens, True)
    loaded = load_tokenizer(str(tokenizer)) if tokenizer and prompt_name == "chat" else None
    builder = PromptBuilder(prompt_name, loaded)
    judge_info = None
    if tasks:
        opened = open_judge(judge, judge_options)
        judge_info = opened.info()
        opened.close()
    identity = protocol_identity(
        builder,
        prompted=bool(names),
        generated=True,
        max_tokens=limit,
        sampling=resolve_sampling(sampling),
        judge=judge_info,
    )
    if builder.is_chat and loaded is None and backend != "openai":
        identity["prompt_sha256"] = None  # rendered by a tokenizer not known here
    return identity


def _units(
    items: Sequence[Item], sampling: Sampling, replay: Any | None
) -> list[tuple[Item, int | None]]:
    """What is generated: (item, sample) for each sample of each item; sample None for a
    greedy run (its lines carry no `sample`). A replay: the samples its file has."""
    if replay is not None:
        return [(it, s) for it in items for s in replay.samples(it.key)]
    if sampling.greedy:
        return [(it, None) for it in items]
    return [(it, s) for it in items for s in range(sampling.samples)]


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


def make_record(item: Item, generation: Generation, sample: int | None = None) -> dict[str, Any]:
    """One results.jsonl line (`sample`: its index in a sampled run, else none)."""
    extracted = extract_answer(generation.response)
    verdict = grade(extracted, item)
    reflections = count_reflections(generation.response)
    record: dict[str, Any] = {"bench": item.bench, "id": item.id}
    if sample is not None:
        record["sample"] = sample
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
    todo: list[tuple[Item, int | None]],
    max_tokens: int,
    run: RunDir,
    done: dict[tuple[Any, ...], dict[str, Any]],
    progress: bool,
    log_prompts: bool,
) -> None:
    prompts = {it.key: builder(it.question, it.gold) for it, _ in todo}
    requests = [Request(it.key, prompts[it.key], sample=s or 0) for it, s in todo]
    logged: set[tuple[str, Any]] = set()
    with EvalProgress(len(todo), enabled=progress) as bar:
        for index, generation in engine.generate(requests, max_tokens):
            item, sample = todo[index]
            record = make_record(item, generation, sample)
            if log_prompts and item.key not in logged:  # one line per item, not per sample
                logged.add(item.key)
                prompt = prompts[item.key]
                row: dict[str, Any] = {"bench": item.bench, "id": item.id, "prompt": prompt.text}
                if prompt.messages is not None:
                    row["messages"] = list(prompt.messages)
                run.append_prompt(row)
            run.append(record)
            done[line_key(*item.key, sample)] = record
            bar.advance(generation.tokens or 0)


__all__ = [
    "BENCHMARKS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS_FEWSHOT",
    "evaluate",
    "make_record",
]
