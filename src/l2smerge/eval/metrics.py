"""The one place where per-item records (results.jsonl lines) become figures: per group (a
benchmark, or one level of it), per level, and the macro average over benchmarks (the study's
"mean over the benchmarks": each benchmark weighs the same, whatever its size). summary.json,
`compare`, `report` and `sweep` all use these functions, so a figure is computed one way.

Intervals: a proportion gets the 95% Wilson score interval; a macro mean of independent
per-benchmark estimates gets the MOVER interval built from theirs (`macro_interval`), which
stays sane where a normal approximation collapses (every benchmark at 0% or 100%).

Sampled runs (several responses per item, each results.jsonl line with its `sample`): the item
is the unit. `item_records` folds an item's samples into one record whose `correct` is the
share of its samples graded correct; accuracy is the mean of those shares (avg@n), and its
interval is Wilson's with the number of items as n and the summed shares as the count of
successes: a share in [0, 1] varies at most as much as a 0/1 verdict with the same mean, so
the interval is conservative, never narrowed by drawing more samples of the same items, and
with one sample per item it is exactly the greedy run's. pass@k is the unbiased estimator of
Chen et al. (2021, "Evaluating Large Language Models Trained on Code"), averaged over items.
Tokens, truncation and reflection are figures of responses: over every sample.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from l2smerge.eval.reflection import study_reflections

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
# Macro-averaged in "average" (the mean over benchmarks, when every benchmark has the figure).
AVERAGED_FIELDS = (
    "accuracy",
    "mean_tokens",
    "median_tokens",
    "truncated_ratio",
    "reflective_ratio",
    "reflections_per_response",
    "study_reflective_ratio",
)


def wilson_interval(correct: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval for the proportion correct / n; (0, 1) when n = 0 (no data
    rules nothing out). `correct` may be a sum of shares in [0, 1] (sampled items, coverage):
    then the interval is conservative (see the module's docstring)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    z2 = Z95 * Z95
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def macro_interval(
    estimates: Sequence[float], intervals: Sequence[Sequence[float]]
) -> tuple[float, float]:
    """95% interval for the unweighted mean of independent estimates, each with its own 95%
    interval: MOVER (Zou & Donner 2008, "method of variance estimates recovery"),
        lower = mean − sqrt(Σ (est_i − lo_i)²) / B,  upper = mean + sqrt(Σ (hi_i − est_i)²) / B.
    With one estimate it is that estimate's interval. Each side borrows its width from the
    same side of the inputs, so asymmetric intervals (Wilson near 0 or 1, Tango's paired
    interval) keep their shape and a macro mean of benchmarks at 0% still gets a width."""
    if len(estimates) != len(intervals) or not estimates:
        raise ValueError("macro_interval needs one interval per estimate, at least one")
    count = len(estimates)
    mean = math.fsum(estimates) / count
    pairs = list(zip(estimates, intervals, strict=True))
    below = math.sqrt(math.fsum((e - lo) ** 2 for e, (lo, _) in pairs)) / count
    above = math.sqrt(math.fsum((hi - e) ** 2 for e, (_, hi) in pairs)) / count
    return (mean - below, mean + above)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are correct:
    1 − C(n − c, k) / C(n, k), computed as a product so that large n stays exact enough."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples per item: 1, 2, 4, ... below n, and n."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i < n]
    return ks + [n]


def item_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per item, in order of first appearance. A line without `sample` (a greedy
    run's) is its item's record as is. The lines of a sampled run are folded per (bench, id):
    the fields of its first sample (level, gold, meta, `extracted`, `response`), then
    `correct` = the share of its samples graded correct, `samples` = how many, `samples_correct`
    = how many correct, `tokens` = their mean (None when one has no count), and
    `sample_records` = the lines, in sample order, for the figures of responses."""
    items: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    greedy: dict[tuple[str, Any], dict[str, Any]] = {}
    order: list[tuple[str, Any]] = []
    for record in records:
        key = (record["bench"], record["id"])
        if key not in items and key not in greedy:
            order.append(key)
        if record.get("sample") is None:
            greedy[key] = record
        else:
            items.setdefault(key, []).append(record)
    out = []
    for key in order:
        if key in greedy:
            out.append(greedy[key])
            continue
        lines = sorted(items[key], key=lambda r: r["sample"])
        right = sum(bool(r["correct"]) for r in lines)
        tokens = [r.get("tokens") for r in lines]
        folded = {k: v for k, v in lines[0].items() if k != "sample"}
        folded.update(
            correct=right / len(lines),
            samples=len(lines),
            samples_correct=right,
            tokens=None if None in tokens else statistics.fmean(tokens),
            sample_records=lines,
        )
        out.append(folded)
    return out


def responses_of(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The response lines behind item records: a sampled item's samples, else the record."""
    return [line for r in records for line in (r.get("sample_records") or [r])]


def level_key(level: Any) -> tuple[int, float | str]:
    """Sort key for difficulty levels: numeric levels in numeric order ("2" before "10"),
    then any other labels alphabetically."""
    try:
        return (0, float(level))
    except (TypeError, ValueError):
        return (1, str(level))


def level_of(record: dict[str, Any]) -> str | None:
    """The record's level as a string key (summary.json's `per_level` keys), or None."""
    level = record.get("level")
    return None if level is None or level == "" else str(level)


def ordered_benches(names: Iterable[str]) -> list[str]:
    """Benchmarks in a fixed order: the registry's (the study's table order), then any other
    names alphabetically. Tables over several runs use it, never completion order."""
    from l2smerge.eval.benchmarks import BENCHMARKS

    known = list(BENCHMARKS)
    unique = set(names)
    return [b for b in known if b in unique] + sorted(unique - set(known))


def _share(records: list[dict[str, Any]], key: str) -> float | None:
    """Share of records whose flag `key` is true; None when a record lacks the flag."""
    if not records or any(r.get(key) is None for r in records):
        return None
    return sum(bool(r[key]) for r in records) / len(records)


def _mean_of(records: list[dict[str, Any]], key: str) -> float | None:
    if not records or any(r.get(key) is None for r in records):
        return None
    return statistics.fmean(r[key] for r in records)


def group_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """n, accuracy with its Wilson interval, token statistics, truncation and reflection
    figures of one group of item records (`item_records`; a greedy run's lines are theirs).
    For sampled items, also `samples` (per item; the fewest when they differ) and `pass_at_k`
    ({"1": ..., "n": ...}); accuracy is then avg@n, the response figures are over samples.

    Token statistics are over every response or nothing: when some records carry no token count
    (a replay file with `tokens` on only some lines), mean and median are None and
    `tokens_missing` says how many lack one, never an average over the rest.
    `ungradable`: responses the grader could not judge (over its time or size limits; counted
    wrong, as the Qwen2.5-Math toolkit counts its timeouts; results.jsonl says why).
    Reflection: `reflective_ratio` / `reflections_per_response` are ours (whole words, see
    eval/reflection.py); the `study_*` figures are the study's own (its code's keywords as
    substrings), computed from each response's text, None when records carry no response."""
    n = len(records)
    correct = math.fsum(float(r["correct"]) for r in records)
    responses = responses_of(records)
    tokens = [r["tokens"] for r in responses if r.get("tokens") is not None]
    complete = len(tokens) == len(responses) and n > 0
    study_counts = (
        [study_reflections(r["response"]) for r in responses]
        if n and all(isinstance(r.get("response"), str) for r in responses)
        else None
    )
    reflective_counts = [c for c in study_counts or [] if c > 0]
    out = {
        "n": n,
        "accuracy": correct / n if n else None,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "mean_tokens": statistics.fmean(tokens) if complete else None,
        "median_tokens": statistics.median(tokens) if complete else None,
        "tokens_missing": len(responses) - len(tokens),
        "ungradable": sum(bool(r.get("ungradable")) for r in responses),
        "truncated_ratio": _share(responses, "truncated"),
        "reflective_ratio": _share(responses, "reflective"),
        "reflections_per_response": _mean_of(responses, "reflections"),
        "study_reflective_ratio": (
            None if study_counts is None else len(reflective_counts) / len(responses)
        ),
        "study_reflections_per_reflective": (
            statistics.fmean(reflective_counts) if reflective_counts else None
        ),
    }
    if n and any("samples" in r for r in records):
        counts = [
            (r.get("samples", 1), r.get("samples_correct", int(bool(r["correct"]))))
            for r in records
        ]
        fewest = min(m for m, _ in counts)
        out["samples"] = fewest
        out["pass_at_k"] = {
            str(k): statistics.fmean(pass_at_k(m, c, k) for m, c in counts) for k in pass_ks(fewest)
        }
    return out


def bench_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """`group_figures` plus `per_level` (in level order) when any record carries a level."""
    out = group_figures(records)
    by_level: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if (level := level_of(r)) is not None:
            by_level.setdefault(level, []).append(r)
    if by_level:
        levels = sorted(by_level, key=level_key)
        out["per_level"] = {lv: group_figures(by_level[lv]) for lv in levels}
    return out


def macro_average(per_bench: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks of each field in AVERAGED_FIELDS (None unless every
    benchmark has it), the accuracy's MOVER interval, and the total n."""
    out: dict[str, Any] = {
        "benchmarks": len(per_bench),
        "n": sum(m["n"] for m in per_bench.values()),
    }
    for name in AVERAGED_FIELDS:
        values = [m.get(name) for m in per_bench.values()]
        out[name] = statistics.fmean(values) if values and None not in values else None
    if out["accuracy"] is not None:
        out["accuracy_ci95"] = list(
            macro_interval(
                [m["accuracy"] for m in per_bench.values()],
                [m["accuracy_ci95"] for m in per_bench.values()],
            )
        )
    else:
        out["accuracy_ci95"] = None
    out["tokens_missing"] = sum(m["tokens_missing"] for m in per_bench.values())
    out["ungradable"] = sum(m.get("ungradable", 0) for m in per_bench.values())
    if per_bench and all("pass_at_k" in m for m in per_bench.values()):
        out["samples"] = min(m["samples"] for m in per_bench.values())
        first = next(iter(per_bench.values()))["pass_at_k"]
        shared = [k for k in first if all(k in m["pass_at_k"] for m in per_bench.values())]
        out["pass_at_k"] = {
            k: statistics.fmean(m["pass_at_k"][k] for m in per_bench.values()) for k in shared
        }
    return out


def figures_by_bench(
    records: Iterable[dict[str, Any]], order: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """`bench_figures` per benchmark, in `order` (default: `ordered_benches`); benchmarks
    without records are left out."""
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_bench.setdefault(record["bench"], []).append(record)
    names = ordered_benches(by_bench) if order is None else [b for b in order if b in by_bench]
    names += [b for b in by_bench if b not in names]
    return {b: bench_figures(by_bench[b]) for b in names}


def summarize(
    model: str, records: Iterable[dict[str, Any]], bench_order: list[str], **fields: Any
) -> dict[str, Any]:
    """The summary.json document for `records` (results.jsonl lines; a sampled run's are
    folded per item first), benchmarks in `bench_order` (the order the run was asked for)."""
    per_bench = figures_by_bench(item_records(records), bench_order)
    return {"model": model, **fields, "benchmarks": per_bench, "average": macro_average(per_bench)}
