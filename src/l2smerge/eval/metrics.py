"""Aggregate per-item verdicts into the numbers of summary.json: per benchmark, per level
where the benchmark has levels, and a macro average over benchmarks (the study's "mean over
the benchmarks": each benchmark weighs the same, whatever its size)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

Z95 = 1.959963984540054
# Macro-averaged in "average"; accuracy_ci95 is not (an interval does not average).
AVERAGED_FIELDS = (
    "accuracy",
    "mean_tokens",
    "median_tokens",
    "truncated_ratio",
    "reflective_ratio",
    "reflections_per_response",
)


def wilson_interval(correct: int, n: int) -> list[float]:
    """95% Wilson score interval for a proportion; [0, 1] when n = 0."""
    if n == 0:
        return [0.0, 1.0]
    p = correct / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def group_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """n, accuracy (+ 95% interval), token statistics, truncation and reflection shares."""
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    tokens = [r["tokens"] for r in records if r.get("tokens") is not None]
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": wilson_interval(correct, n),
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "median_tokens": statistics.median(tokens) if tokens else None,
        "truncated_ratio": sum(bool(r["truncated"]) for r in records) / n if n else 0.0,
        "reflective_ratio": sum(bool(r["reflective"]) for r in records) / n if n else 0.0,
        "reflections_per_response": sum(r["reflections"] for r in records) / n if n else 0.0,
    }


def _level_key(level: Any) -> str:
    return str(level)


def bench_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """`group_metrics` plus `per_level` when any record carries a level."""
    out = group_metrics(records)
    levelled = [r for r in records if r.get("level") is not None]
    if levelled:
        levels = sorted({r["level"] for r in levelled}, key=lambda v: (str(type(v)), v))
        out["per_level"] = {
            _level_key(level): group_metrics([r for r in levelled if r["level"] == level])
            for level in levels
        }
    return out


def macro_average(per_bench: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks of each field in AVERAGED_FIELDS."""
    out: dict[str, Any] = {
        "benchmarks": len(per_bench),
        "n": sum(m["n"] for m in per_bench.values()),
    }
    for name in AVERAGED_FIELDS:
        values = [m[name] for m in per_bench.values() if m.get(name) is not None]
        out[name] = statistics.fmean(values) if values and len(values) == len(per_bench) else None
    return out


def summarize(
    model: str, records: Iterable[dict[str, Any]], bench_order: list[str], **fields: Any
) -> dict[str, Any]:
    """The summary.json document for `records` (results.jsonl lines)."""
    by_bench: dict[str, list[dict[str, Any]]] = {b: [] for b in bench_order}
    for record in records:
        by_bench.setdefault(record["bench"], []).append(record)
    per_bench = {b: bench_metrics(rs) for b, rs in by_bench.items() if rs}
    return {"model": model, **fields, "benchmarks": per_bench, "average": macro_average(per_bench)}
