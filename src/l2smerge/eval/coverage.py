"""Key-point coverage as numbers: per item (which points a response covers) and per task or
group (mean coverage with a 95% interval, the share of responses covering every point,
tokens). Pure functions on judgements and results.jsonl records."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from l2smerge.eval.judges.base import Judgement
from l2smerge.eval.metrics import macro_interval, wilson_interval
from l2smerge.eval.tasks import KeyPoint

# Macro-averaged over tasks, like accuracy over benchmarks.
AVERAGED_FIELDS = ("mean_coverage", "full_coverage_ratio", "mean_tokens", "median_tokens")


def coverage_fields(judgement: Judgement, key_points: Sequence[KeyPoint]) -> dict[str, Any]:
    """The coverage part of one results.jsonl line. A judge error leaves coverage null (no
    verdict, neither a pass nor a miss) and says why."""
    names = [p.text for p in key_points]
    if judgement.verdicts is None:
        return {
            "key_points": names,
            "covered_points": None,
            "coverage": None,
            "full_coverage": None,
            "verdicts": None,
            "judge_error": judgement.error or "no verdict",
        }
    covered = [v.point for v in judgement.verdicts if v.covered]
    out: dict[str, Any] = {
        "key_points": names,
        "covered_points": covered,
        "coverage": len(covered) / len(names),
        "full_coverage": len(covered) == len(names),
        "verdicts": [v.to_json() for v in judgement.verdicts],
        "judge_error": None,
    }
    if judgement.input_truncated:
        out["judge_input_truncated"] = True
    return out


def dropped_points(record: dict[str, Any]) -> list[str] | None:
    """The key points a judged response does not cover; None after a judge error."""
    if record.get("coverage") is None:
        return None
    covered = set(record["covered_points"])
    return [p for p in record["key_points"] if p not in covered]


def mean_interval(values: Sequence[float]) -> list[float] | None:
    """95% interval for the mean of coverages in [0, 1]: the Wilson score interval with the
    summed coverage as the count of successes. A coverage varies at most as much as a 0/1
    outcome with the same mean, so this is conservative, it is exactly Wilson's interval when
    every item has one key point, and, unlike a t interval, it keeps a width when every item
    has the same coverage (all covered: it says how sure n items can make you)."""
    if not values:
        return None
    return list(wilson_interval(math.fsum(values), len(values)))


def coverage_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n, judged items, judge errors, mean coverage (+ 95% interval), the share fully
    covered (+ Wilson interval), key points in all and covered, tokens, truncation."""
    judged = [r for r in records if r.get("coverage") is not None]
    values = [float(r["coverage"]) for r in judged]
    full = sum(bool(r["full_coverage"]) for r in judged)
    tokens = [r["tokens"] for r in records if r.get("tokens") is not None]
    complete = bool(records) and len(tokens) == len(records)
    return {
        "n": len(records),
        "judged": len(judged),
        "judge_errors": len(records) - len(judged),
        "mean_coverage": statistics.fmean(values) if values else None,
        "coverage_ci95": mean_interval(values),
        "full_coverage_ratio": full / len(judged) if judged else None,
        "full_coverage_ci95": list(wilson_interval(full, len(judged))) if judged else None,
        "key_points": sum(len(r["key_points"]) for r in judged),
        "covered_points": sum(len(r["covered_points"]) for r in judged),
        # over every item or none (eval.metrics' rule): never a mean over a subset
        "mean_tokens": statistics.fmean(tokens) if complete else None,
        "median_tokens": statistics.median(tokens) if complete else None,
        "tokens_missing": len(records) - len(tokens),
        "truncated_ratio": (
            sum(bool(r.get("truncated")) for r in records) / len(records) if records else 0.0
        ),
    }


def group_of(record: dict[str, Any]) -> str:
    """A record's task group; its task (bench) when it has none."""
    group = record.get("group")
    return str(group) if group not in (None, "") else str(record["bench"])


def per_group(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`coverage_metrics` for each group, groups in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(group_of(record), []).append(record)
    return {name: coverage_metrics(rs) for name, rs in groups.items()}


def macro_average(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The unweighted mean over tasks of each field in AVERAGED_FIELDS (None when a task
    lacks it), the mean coverage's MOVER interval, the total n and judge errors."""
    out: dict[str, Any] = {
        "tasks": len(per_task),
        "n": sum(m["n"] for m in per_task.values()),
        "judge_errors": sum(m["judge_errors"] for m in per_task.values()),
    }
    for name in AVERAGED_FIELDS:
        values = [m[name] for m in per_task.values() if m.get(name) is not None]
        ok = values and len(values) == len(per_task)
        out[name] = statistics.fmean(values) if ok else None
    out["coverage_ci95"] = (
        list(
            macro_interval(
                [m["mean_coverage"] for m in per_task.values()],
                [m["coverage_ci95"] for m in per_task.values()],
            )
        )
        if out["mean_coverage"] is not None
        else None
    )
    return out
