"""Choosing the operating point of a sweep, by a rule stated in words and numbers.

shortest_noninferior (the default when there is a System 2 reference): a point is eligible
only if its accuracy is *shown* to be within `margin` points of the reference's: the lower
end of the 95% interval of the accuracy delta (point − reference, paired on the items both
evaluated; Tango's score interval per benchmark, combined over benchmarks by MOVER, see
compare.py) is above −margin. Optionally (`benchmark_margin`), no single benchmark may drop by
more than that many points. The eligible point with the fewest macro mean tokens wins (ties:
the more accurate). Absence of evidence is not evidence: with few items every interval is
wide and nothing is eligible; the rule then says how many items would be needed.

most_accurate (the default without a reference): the highest macro accuracy, ties broken
by fewer tokens.
"""

from __future__ import annotations

import math
from typing import Any

from l2smerge.eval.metrics import Z95
from l2smerge.util.errors import L2SError

DEFAULT_MARGIN = 2.0  # points of accuracy


def tie_lower_bound(bench_sizes: list[int]) -> float:
    """The lower bound of the macro delta interval for a point that answers every item as the
    reference does (no discordant item): the best any point can get on these items. Tango's
    interval with no discordant pair is ±z²/(n + z²) per benchmark; MOVER over benchmarks."""
    if not bench_sizes:
        return -1.0
    halves = [Z95**2 / (n + Z95**2) for n in bench_sizes]
    return -math.sqrt(sum(h * h for h in halves)) / len(halves)


def items_needed(margin: float, benchmarks: int) -> int:
    """Items per benchmark (all benchmarks the same size) at which an exact tie is shown
    within `margin` (a fraction): the smallest n with tie_lower_bound([n] * B) > −margin."""
    target = margin * math.sqrt(benchmarks)  # per-benchmark half-width allowed
    if target >= 1:
        return 1
    n = max(1, math.floor(Z95**2 * (1 - target) / target))
    while tie_lower_bound([n] * benchmarks) <= -margin:
        n += 1
    return n


def choose(
    points: list[dict[str, Any]],
    *,
    rule: str = "auto",
    margin: float = DEFAULT_MARGIN,
    benchmark_margin: float | None = None,
    has_reference: bool,
    metric: str = "accuracy",
) -> dict[str, Any]:
    """`points`: points.jsonl records (accuracy, mean_tokens, vs_reference); `margin` and
    `benchmark_margin` in points of accuracy. Returns {"rule", "statement", "chosen" (id or
    None), "eligible", "rejected", "lines", ...} (selection.json). `metric` names what
    `accuracy` holds in the words printed: "coverage" when a sweep over free-form tasks passes
    key-point coverage in those fields (docs/tasks.md)."""
    if rule == "auto":
        rule = "shortest_noninferior" if has_reference else "most_accurate"
    if rule == "shortest_noninferior" and not has_reference:
        raise L2SError(
            "selection.rule: shortest_noninferior needs a reference (reference: {model: ...} "
            "or {run: ...}); add one or use rule: most_accurate"
        )
    if rule == "most_accurate":
        return _most_accurate(points, metric)
    return _shortest_noninferior(points, margin / 100, _fraction(benchmark_margin), metric)


def _fraction(points_value: float | None) -> float | None:
    return None if points_value is None else points_value / 100


def _most_accurate(points: list[dict[str, Any]], metric: str = "accuracy") -> dict[str, Any]:
    statement = f"the most accurate point (macro {metric}; ties: fewer mean tokens)"
    if metric != "accuracy":
        statement = f"the point of highest macro {metric} (ties: fewer mean tokens)"
    result: dict[str, Any] = {
        "rule": "most_accurate",
        "statement": statement,
        "chosen": None,
        "eligible": [p["id"] for p in points],
        "rejected": [],
        "lines": [f"rule: most_accurate: {statement}"],
    }
    if not points:
        result["lines"].append("chosen: none; no finished points to choose from")
        return result
    best = max(points, key=lambda p: (p["accuracy"], -p["mean_tokens"]))
    result["chosen"] = best["id"]
    result["lines"].append(
        f"chosen: {best['label']}: {metric} {100 * best['accuracy']:.1f}%, "
        f"{best['mean_tokens']:.0f} mean tokens"
    )
    return result


def _shortest_noninferior(
    points: list[dict[str, Any]],
    margin: float,
    benchmark_margin: float | None,
    metric: str = "accuracy",
) -> dict[str, Any]:
    tango = "Tango per benchmark" if metric == "accuracy" else "Tango on fractional counts"
    statement = (
        f"the shortest merge (fewest macro mean tokens) whose {metric} is shown within "
        f"{_pts(margin)} points of the reference: eligible when the lower end of the 95% "
        f"interval of the {metric} delta (point − reference, paired on the shared items; "
        f"{tango}, MOVER over benchmarks) is above −{_pts(margin)} points"
    )
    if benchmark_margin is not None:
        statement += f" and no benchmark drops by more than {_pts(benchmark_margin)} points"
    result: dict[str, Any] = {
        "rule": "shortest_noninferior",
        "statement": statement,
        "margin": 100 * margin,
        "benchmark_margin": None if benchmark_margin is None else 100 * benchmark_margin,
        "chosen": None,
        "eligible": [],
        "rejected": [],
        "lines": [f"rule: shortest_noninferior: {statement}"],
    }
    if not points:
        result["lines"].append("chosen: none; no finished points to choose from")
        return result
    eligible = []
    for p in sorted(points, key=lambda p: (p["mean_tokens"], -p["accuracy"])):
        v = p["vs_reference"]
        reasons = _reasons(v, margin, benchmark_margin)
        (result["rejected"] if reasons else result["eligible"]).append(p["id"])
        if not reasons:
            eligible.append(p)
        line = (
            f"  {'✗' if reasons else '✓'} {p['label']}: {metric} "
            f"{100 * v['point_accuracy']:.1f}% vs {100 * v['reference_accuracy']:.1f}% (delta "
            f"{_signed(v['delta'])} pts, 95% CI [{_signed(v['delta_ci95'][0])}, "
            f"{_signed(v['delta_ci95'][1])}], n = {v['n']}), {p['mean_tokens']:.0f} tokens "
            f"(x{_ratio(v['tokens_ratio'])} of reference)"
        )
        result["lines"].append(line + (f": {'; '.join(reasons)}" if reasons else ""))
    sizes = _bench_sizes(points[0]["vs_reference"])
    floor = tie_lower_bound(sizes)
    needed = items_needed(margin, len(sizes))
    result["tie_lower_bound"] = floor
    result["items_needed_per_benchmark"] = needed
    if eligible:
        chosen = eligible[0]
        v = chosen["vs_reference"]
        length = "" if v["tokens_ratio"] is None else f", {_signed(v['tokens_ratio'] - 1)}% length"
        result["chosen"] = chosen["id"]
        result["lines"].append(
            f"chosen: {chosen['label']}: {metric} {100 * v['point_accuracy']:.1f}% against "
            f"{100 * v['reference_accuracy']:.1f}% for the reference on the same "
            f"{v['n']} items (delta {_signed(v['delta'])} pts, lower bound "
            f"{_signed(v['delta_ci95'][0])} > −{_pts(margin)}), "
            f"{chosen['mean_tokens']:.0f} mean tokens{length}"
        )
    elif floor <= -margin:
        n = points[0]["vs_reference"]["n"]
        result["lines"].append(
            f"chosen: none; no merge is shown within {_pts(margin)} points on {n} items; "
            f"evaluate more items: even a merge that answers every item as the reference "
            f"does would have a lower bound of {_signed(floor)} points here; about {needed} "
            f"items per benchmark ({len(sizes)} benchmark{'s' if len(sizes) > 1 else ''}) "
            "are needed"
        )
    else:
        closest = max(points, key=lambda p: p["vs_reference"]["delta_ci95"][0])
        lower = closest["vs_reference"]["delta_ci95"][0]
        result["lines"].append(
            f"chosen: none; no merge is shown within {_pts(margin)} points of the reference "
            f"(closest: {closest['label']}, lower bound {_signed(lower)} points); evaluate "
            "more items to narrow the intervals, or choose a larger margin"
        )
    return result


def _reasons(v: dict[str, Any], margin: float, benchmark_margin: float | None) -> list[str]:
    reasons = []
    lower = v["delta_ci95"][0]
    if not lower > -margin:
        reasons.append(f"lower bound {_signed(lower)} <= −{_pts(margin)}")
    if benchmark_margin is not None:
        for bench, b in (v.get("benchmarks") or {}).items():
            if b["delta"] < -benchmark_margin:
                reasons.append(f"{bench} drops {_pts(-b['delta'])} > {_pts(benchmark_margin)} pts")
    return reasons


def _bench_sizes(v: dict[str, Any]) -> list[int]:
    benches = v.get("benchmarks")
    return [b["n"] for b in benches.values()] if benches else [v["n"]]


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:+.1f}"


def _ratio(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"
