"""Evaluating free-form tasks inside `evaluate`: task items -> prompts (the item's messages
through the model's chat template) -> backend -> coverage judge -> results.jsonl lines in the
run directory contract (a task is a bench named after its file) -> coverage figures in
summary.json. See docs/tasks.md."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from l2smerge.eval.backends.base import Generation, Request
from l2smerge.eval.coverage import coverage_fields, coverage_metrics, macro_average, per_group
from l2smerge.eval.judges import Judge, Judgement, JudgeRequest, make_judge
from l2smerge.eval.judges.llm import JudgeUnavailable
from l2smerge.eval.progress import EvalProgress
from l2smerge.eval.prompts import Prompt
from l2smerge.eval.reflection import count_reflections
from l2smerge.eval.tasks import TaskItem, load_tasks

# Responses judged together: the llm judge works on a chunk concurrently; a judge that fails
# for good loses no generation (the chunk is written with the error and re-judged on resume).
JUDGE_CHUNK = 32
RAW_CHAT_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"


def load_task_items(paths: Sequence[str | Path] | None, limit: int | None) -> list[TaskItem]:
    return [item for task in load_tasks(list(paths or ()), limit) for item in task.items]


def id_text(key: tuple[str, Any]) -> tuple[str, str]:
    """An item key with its id as text: task ids are compared as text (3 is "3")."""
    return (key[0], str(key[1]))


def task_prompt(item: TaskItem, tokenizer: Any | None) -> Prompt:
    """The item's messages through the tokenizer's chat template; without one, the raw Qwen
    chat form (every turn, then the assistant's opening)."""
    messages = item.messages
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    else:
        text = "".join(RAW_CHAT_TURN.format(**m) for m in messages) + "<|im_start|>assistant\n"
    return Prompt(text, messages)


def task_record(item: TaskItem, generation: Generation, judgement: Judgement) -> dict[str, Any]:
    """One results.jsonl line for a task item. `correct` is full coverage, so tools that know
    only accuracy read a task's accuracy as the share of responses covering every point."""
    record: dict[str, Any] = {"bench": item.task, "id": item.id}
    if item.group is not None:
        record["group"] = item.group
    record.update(coverage_fields(judgement, item.key_points))
    reflections = count_reflections(generation.response)
    record.update(
        correct=bool(record["full_coverage"]),
        tokens=generation.tokens,
        truncated=generation.truncated,
        reflective=reflections > 0,
        reflections=reflections,
        judge_requests=judgement.requests,
        judge_prompt_tokens=judgement.prompt_tokens,
        judge_completion_tokens=judgement.completion_tokens,
    )
    if item.reference is not None:
        record["reference"] = item.reference
    if item.meta:
        record["meta"] = item.meta
    record["response"] = generation.response
    return record


def generation_of(record: dict[str, Any]) -> Generation:
    """The generation a results line was made from (to judge it again)."""
    return Generation(record["response"], record.get("tokens"), bool(record.get("truncated")))


def needs_judging(record: dict[str, Any]) -> bool:
    """A task line whose judge failed: resume judges it again (its response is kept)."""
    return record.get("judge_error") is not None


class _Writer:
    """Judges (item, generation) pairs in chunks and appends their records."""

    def __init__(self, judge: Judge, run: Any, done: dict, bar: EvalProgress):
        self.judge, self.run, self.done, self.bar = judge, run, done, bar
        self.pending: list[tuple[TaskItem, Generation]] = []

    def add(self, item: TaskItem, generation: Generation) -> None:
        self.pending.append((item, generation))
        if len(self.pending) >= JUDGE_CHUNK:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        requests = [JudgeRequest(g.response, it.key_points) for it, g in pending]
        written: set[int] = set()
        try:
            for index, judgement in self.judge.judge(requests):
                self._write(*pending[index], judgement)
                written.add(index)
        except JudgeUnavailable as exc:
            for index, (item, generation) in enumerate(pending):
                if index not in written:  # keep the response; a rerun judges it again
                    self._write(item, generation, Judgement(None, error=str(exc)))
            raise

    def _write(self, item: TaskItem, generation: Generation, judgement: Judgement) -> None:
        record = task_record(item, generation, judgement)
        self.run.append(record)
        self.done[item.key] = record
        self.bar.advance(generation.tokens or 0)


def generate_and_judge(
    engine: Any | None,
    judge: Judge,
    todo: list[TaskItem],
    rejudge: list[TaskItem],
    max_tokens: int,
    run: Any,
    done: dict[tuple[str, Any], dict[str, Any]],
    progress: bool,
) -> None:
    """Generate and judge `todo`; judge `rejudge` again from the responses in `done`."""
    with EvalProgress(len(todo) + len(rejudge), enabled=progress, description="judging") as bar:
        writer = _Writer(judge, run, done, bar)
        for item in rejudge:
            writer.add(item, generation_of(done[item.key]))
        if todo:
            tokenizer = engine.tokenizer
            requests = [Request(it.key, task_prompt(it, tokenizer)) for it in todo]
            for index, generation in engine.generate(requests, max_tokens):
                writer.add(todo[index], generation)
        writer.flush()


def open_judge(name: str, options: dict[str, Any] | None) -> Judge:
    return make_judge(name, **(options or {})) if name == "llm" else make_judge(name)


def add_coverage(summary: dict[str, Any], records: Iterable[dict[str, Any]], judge: Judge) -> None:
    """Coverage figures into summary.json: per task (beside its accuracy = share fully
    covered) with `per_group`, `coverage_average` over tasks, and the judge with its cost."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if isinstance(record.get("key_points"), list):
            by_task.setdefault(record["bench"], []).append(record)
    if not by_task:
        return
    per_task = {}
    for task, task_records in by_task.items():
        figures = coverage_metrics(task_records)
        per_task[task] = figures
        entry = summary["benchmarks"].setdefault(task, {})
        entry.update({k: v for k, v in figures.items() if k not in entry or k == "n"})
        entry["per_group"] = per_group(task_records)
    summary["coverage_average"] = macro_average(per_task)
    every = [r for rs in by_task.values() for r in rs]
    summary["judge"] = {
        **judge.info(),
        "requests": sum(r.get("judge_requests", 0) for r in every),
        "prompt_tokens": sum(r.get("judge_prompt_tokens", 0) for r in every),
        "completion_tokens": sum(r.get("judge_completion_tokens", 0) for r in every),
    }


def coverage_table(summary: dict[str, Any]) -> Any:
    """The coverage part of a summary as a rich table: per task, its groups, the average."""
    from rich.table import Table

    table = Table(title="key-point coverage", title_justify="left")
    for name in ("task / group", "n", "coverage%", "95% CI", "full%", "judge errors", "tokens"):
        table.add_column(name, justify="left" if name == "task / group" else "right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def row(name: str, m: dict[str, Any], style: str | None = None) -> None:
        ci = m.get("coverage_ci95")
        tokens = m.get("mean_tokens")
        table.add_row(
            name,
            str(m["n"]),
            pct(m["mean_coverage"]),
            f"{pct(ci[0])}-{pct(ci[1])}" if ci else "-",
            pct(m.get("full_coverage_ratio")),
            str(m["judge_errors"]),
            "-" if tokens is None else f"{tokens:,.0f}",
            style=style,
        )

    for task, m in summary["benchmarks"].items():
        if "mean_coverage" not in m:
            continue
        row(task, m, style="bold")
        groups = m.get("per_group", {})
        if list(groups) != [task]:
            for group, g in groups.items():
                row(f"  {group}", g)
    return table
