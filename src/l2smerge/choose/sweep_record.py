"""A finished point as points.jsonl records it: its run's figures (macro accuracy, mean
tokens, per benchmark; key-point coverage for free-form tasks) and what the selection rule
needs about it against the reference, all read from its run directory."""

from __future__ import annotations

from typing import Any

from l2smerge.choose.compare import compare_runs
from l2smerge.choose.coverage_report import coverage_vs_reference
from l2smerge.choose.report import summarise
from l2smerge.choose.sweep_spec import Point
from l2smerge.eval.identity import check_same_protocol
from l2smerge.eval.runs import Run, load_run
from l2smerge.util.errors import L2SError

COMPARE_RESAMPLES = 1000


def point_record(point: Point, outcome: dict[str, Any], reference: Run | None) -> dict[str, Any]:
    """The points.jsonl record of `point` from its finished run (`outcome`: what
    merge_and_evaluate returned), compared to `reference` when the sweep has one."""
    run = load_run(outcome["run_dir"], point.label)
    if reference is not None:  # no selection across prompts, stops or limits
        check_same_protocol([reference, run], "select against the reference")
    stats = summarise(run)
    if stats.average["mean_tokens"] is None:
        raise L2SError(
            f"{outcome['run_dir']}: the run has no token counts, so the sweep cannot "
            "weigh length; use a backend that counts tokens (hf, vllm, or openai with usage)"
        )
    record: dict[str, Any] = {
        "id": point.id,
        "label": point.label,
        "source": point.source,
        **point.key(),
        "run_dir": outcome["run_dir"],
        "model_dir": outcome["model_dir"],
        "accuracy": stats.average["accuracy"],
        "accuracy_ci95": stats.average["accuracy_ci95"],
        "mean_tokens": stats.average["mean_tokens"],
        "reflective_ratio": stats.average["reflective_ratio"],
        "benchmarks": {
            b: {k: g[k] for k in ("n", "accuracy", "mean_tokens", "reflective_ratio")}
            for b, g in stats.benches.items()
        },
        "vs_reference": None,
        "merge_seconds": outcome.get("merge_seconds", 0.0),
        "eval_seconds": outcome.get("eval_seconds", 0.0),
    }
    if stats.coverage is not None:  # free-form tasks (docs/tasks.md)
        record["coverage"] = stats.coverage["average"]["mean_coverage"]
        record["coverage_ci95"] = stats.coverage["average"]["coverage_ci95"]
        record["coverage_mean_tokens"] = stats.coverage["average"]["mean_tokens"]
    if reference is not None:
        compare_to_reference(record, run, reference)
    return record


def compare_to_reference(record: dict[str, Any], run: Run, reference: Run) -> None:
    """Set `record`'s comparison with the reference: `vs_reference`, and
    `vs_reference_coverage` for free-form tasks. The one place a point meets the reference."""
    record["vs_reference"] = vs_reference(reference, run)
    if "coverage" in record:
        record["vs_reference_coverage"] = coverage_vs_reference(reference, run)


def vs_reference(reference: Run, run: Run) -> dict[str, Any]:
    """What the selection rule needs about a point against the reference, on the items both
    evaluated: macro delta with its interval, per-benchmark deltas, length ratio."""
    cmp = compare_runs(reference, run, resamples=COMPARE_RESAMPLES)
    avg = cmp["average"]
    return {
        "n": avg["n"],
        "delta": avg["delta"],
        "delta_ci95": avg["delta_ci95"],
        "p_value": avg["p_value"],
        "tokens_ratio": avg["tokens_ratio"],
        "tokens_ratio_ci95": avg["tokens_ratio_ci95"],
        "reference_accuracy": avg["accuracy_a"],
        "point_accuracy": avg["accuracy_b"],
        "benchmarks": {
            b: {k: c[k] for k in ("n", "delta", "delta_ci95")} for b, c in cmp["benchmarks"].items()
        },
    }


def reference_figures(reference: Run | None, metric: str) -> dict[str, Any] | None:
    """The reference's macro figures for pareto.json: accuracy (key-point coverage when the
    sweep weighs coverage) and mean tokens."""
    if reference is None:
        return None
    stats = summarise(reference)
    figures = {
        "label": reference.label,
        "accuracy": stats.average["accuracy"],
        "mean_tokens": stats.average["mean_tokens"],
    }
    if metric == "coverage":
        coverage = (stats.coverage or {"average": {}})["average"]
        figures["accuracy"] = coverage.get("mean_coverage")
        figures["mean_tokens"] = coverage.get("mean_tokens")
    return figures
