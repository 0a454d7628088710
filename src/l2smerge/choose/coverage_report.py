"""Key-point coverage where runs are summarised and chosen between (report, sweep): a run's
coverage figures, a point against the reference on coverage (in the shape the selection rule
reads), the report's coverage table. Free-form records only; None where a run has none."""

from __future__ import annotations

from typing import Any

from l2smerge.choose.compare import tokens_ratio
from l2smerge.choose.coverage_ab import coverage_comparison, is_freeform
from l2smerge.eval.coverage import coverage_metrics, macro_average, per_group
from l2smerge.eval.runs import Run


def run_coverage(records: Any) -> dict[str, Any] | None:
    """{"tasks": per task, "groups": per group, "average": macro over tasks} of a run's
    free-form records (eval.coverage figures), or None when it has none."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if is_freeform(record):
            by_task.setdefault(record["bench"], []).append(record)
    if not by_task:
        return None
    tasks = {task: coverage_metrics(rs) for task, rs in by_task.items()}
    every = [r for rs in by_task.values() for r in rs]
    return {"tasks": tasks, "groups": per_group(every), "average": macro_average(tasks)}


def coverage_vs_reference(reference: Run, run: Run) -> dict[str, Any]:
    """A point against the reference on key-point coverage, in the fields the selection rule
    reads (`reference_accuracy` / `point_accuracy` hold coverages): macro delta with its
    interval, per-task deltas, length ratio on the shared free-form items."""
    pairs = [
        (ref, run.records[key])
        for key, ref in reference.records.items()
        if key in run.records and is_freeform(ref)
    ]
    cmp = coverage_comparison(pairs)
    avg = cmp["average"]
    by_task: dict[str, list] = {}
    for a, b in pairs:
        by_task.setdefault(a["bench"], []).append((a, b))
    return {
        "metric": "coverage",
        "n": avg["n"],
        "delta": avg["delta"],
        "delta_ci95": avg["delta_ci95"],
        "p_value": avg["p_value"],
        "tokens_ratio": tokens_ratio(by_task) if by_task else None,
        "reference_accuracy": avg["mean_coverage_a"],
        "point_accuracy": avg["mean_coverage_b"],
        "points_dropped": avg["points_dropped"],
        "benchmarks": {
            t: {k: c[k] for k in ("n", "delta", "delta_ci95")} for t, c in cmp["tasks"].items()
        },
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    if not ci:
        return _pct(value)
    return f"{100 * value:.1f} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def coverage_table(
    labels: list[str], coverages: list[dict[str, Any] | None], reference: str | None = None
) -> dict[str, Any] | None:
    """The report's coverage table ({"title", "note", "header", "rows"}), or None when no run
    has free-form results: per task and the macro average, the share fully covered, judge
    errors and mean tokens."""
    present = [(label, c) for label, c in zip(labels, coverages, strict=True) if c is not None]
    if not present:
        return None
    tasks = list(dict.fromkeys(t for _, c in present for t in c["tasks"]))
    rows = []
    for label, c in present:
        avg = c["average"]
        rows.append(
            [
                label,
                *(
                    _with_ci(c["tasks"][t]["mean_coverage"], c["tasks"][t]["coverage_ci95"])
                    if t in c["tasks"]
                    else "–"
                    for t in tasks
                ),
                _with_ci(avg["mean_coverage"], avg.get("coverage_ci95")),
                _pct(avg["full_coverage_ratio"]),
                str(avg["judge_errors"]),
                "–" if avg["mean_tokens"] is None else f"{avg['mean_tokens']:.0f}",
            ]
        )
    note = (
        "Share of each response's key points it covers (docs/tasks.md), with a 95% interval "
        "(Wilson on the summed coverage; Avg: MOVER over tasks); full: responses covering "
        "every point; items with a judge error are left out of coverage and counted apart."
    )
    if reference:
        note += f" `l2smerge compare {reference} RUN` names the points each run dropped."
    return {
        "title": "Key-point coverage % (95% CI)",
        "note": note,
        "header": ["run", *tasks, "Avg", "full %", "judge errors", "mean tokens"],
        "rows": rows,
    }
