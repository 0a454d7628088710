"""From finished points to the Pareto front and the chosen point: pure functions on
points.jsonl records (no files, no printing), so each can be tested on plain data."""

from __future__ import annotations

from typing import Any

from l2smerge.choose.pareto import pareto_front
from l2smerge.choose.selection import choose
from l2smerge.choose.sweep_spec import SweepSpec


def selection_metric(spec: SweepSpec) -> str:
    """What the selection weighs: the file's choice; auto is coverage for a sweep over
    free-form tasks only."""
    metric = spec.selection.metric
    if metric == "auto":
        metric = "coverage" if spec.eval.tasks and not spec.eval.benches else "accuracy"
    return metric


def on_coverage(record: dict[str, Any]) -> dict[str, Any]:
    """A point record as the selection rule and the front read it when they weigh key-point
    coverage: coverage in `accuracy`, coverage against the reference in `vs_reference`, tokens
    over the free-form items."""
    return {
        **record,
        "accuracy": record["coverage"],
        "accuracy_ci95": record["coverage_ci95"],
        "mean_tokens": record["coverage_mean_tokens"],
        "vs_reference": record.get("vs_reference_coverage"),
    }


def pareto(
    records: list[dict[str, Any]], reference: dict[str, Any] | None, metric: str = "accuracy"
) -> dict[str, Any]:
    """pareto.json: the points by mean tokens, which are on the accuracy/length front, and the
    reference's figures (`reference`, or None)."""
    acc = [r["accuracy"] for r in records]
    tok = [r["mean_tokens"] for r in records]
    front = [records[i]["id"] for i in pareto_front(acc, tok)] if records else []
    return {
        "objectives": f"maximise macro {metric}, minimise macro mean tokens",
        "front": front,
        "points": [
            {
                "id": r["id"],
                "label": r["label"],
                "accuracy": r["accuracy"],
                "mean_tokens": r["mean_tokens"],
                "on_front": r["id"] in front,
            }
            for r in sorted(records, key=lambda r: r["mean_tokens"])
        ],
        "reference": reference,
    }


def front_and_choice(
    records: list[dict[str, Any]], spec: SweepSpec, reference: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pareto.json, selection.json) for the finished `records` under the sweep's selection
    settings; `reference`: the reference's figures (None: the sweep has no reference)."""
    metric = selection_metric(spec)
    weighed = records if metric == "accuracy" else [on_coverage(r) for r in records]
    selection = choose(
        weighed,
        rule=spec.selection.rule,
        margin=spec.selection.margin,
        benchmark_margin=spec.selection.benchmark_margin,
        has_reference=reference is not None,
        metric=metric,
    )
    return pareto(weighed, reference, metric), selection
