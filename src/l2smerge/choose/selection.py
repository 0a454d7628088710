"""Choosing the operating point of a sweep, by a rule stated in words and numbers.

shortest_not_worse (the default when there is a System 2 reference): among the points whose
accuracy is *not significantly below* the reference, the one with the fewest mean tokens
(ties: the more accurate). "Significantly below" means: on the items both runs evaluated,
the macro accuracy delta (point − reference) is negative AND its two-sided paired p-value is
below `alpha` (exact McNemar with one benchmark, a sign-flip permutation test over several;
see compare.py). A point with no significant loss is kept even when its delta is negative:
with few items the rule is lenient, and the printed numbers show how lenient.

most_accurate (the default without a reference): the highest macro accuracy, ties broken
by fewer tokens.
"""

from __future__ import annotations

from typing import Any

from l2smerge.util.errors import L2SError


def choose(
    points: list[dict[str, Any]], *, rule: str = "auto", alpha: float = 0.05, has_reference: bool
) -> dict[str, Any]:
    """`points`: points.jsonl records (accuracy, mean_tokens, vs_reference). Returns
    {"rule", "statement", "chosen" (id or None), "eligible", "rejected", "lines"}."""
    if rule == "auto":
        rule = "shortest_not_worse" if has_reference else "most_accurate"
    if rule == "shortest_not_worse" and not has_reference:
        raise L2SError(
            "selection.rule: shortest_not_worse needs a reference (reference: {model: ...} "
            "or {run: ...}); add one or use rule: most_accurate"
        )
    if not points:
        return {
            "rule": rule,
            "statement": "",
            "chosen": None,
            "eligible": [],
            "rejected": [],
            "lines": ["no finished points to choose from"],
        }
    if rule == "most_accurate":
        best = max(points, key=lambda p: (p["accuracy"], -p["mean_tokens"]))
        statement = "the most accurate point (macro accuracy; ties: fewer mean tokens)"
        return {
            "rule": rule,
            "statement": statement,
            "chosen": best["id"],
            "eligible": [p["id"] for p in points],
            "rejected": [],
            "lines": [
                f"rule: {statement}",
                f"chosen: {best['label']}: accuracy {100 * best['accuracy']:.1f}%, "
                f"{best['mean_tokens']:.0f} mean tokens",
            ],
        }
    statement = (
        "the shortest merge (fewest macro mean tokens) whose accuracy is not significantly "
        f"below the reference: rejected when delta < 0 and paired p < {alpha:g}"
    )
    eligible, rejected = [], []
    lines = [f"rule: {statement}"]
    for p in sorted(points, key=lambda p: p["mean_tokens"]):
        v = p["vs_reference"]
        worse = v["delta"] < 0 and v["p_value"] < alpha
        (rejected if worse else eligible).append(p)
        lines.append(
            f"  {'✗' if worse else '✓'} {p['label']}: accuracy {100 * p['accuracy']:.1f}% "
            f"(delta {100 * v['delta']:+.1f} pts, 95% CI [{_pts(v['delta_ci95'][0])}, "
            f"{_pts(v['delta_ci95'][1])}], p = {v['p_value']:.3g}, n = {v['n']}), "
            f"{p['mean_tokens']:.0f} tokens (x{_ratio(v['tokens_ratio'])} of reference)"
        )
    chosen = None
    if eligible:
        best_tokens = min(p["mean_tokens"] for p in eligible)
        chosen = max(
            (p for p in eligible if p["mean_tokens"] == best_tokens), key=lambda p: p["accuracy"]
        )
        v = chosen["vs_reference"]
        length = (
            "" if v["tokens_ratio"] is None else f", {100 * (v['tokens_ratio'] - 1):+.1f}% length"
        )
        lines.append(
            f"chosen: {chosen['label']}: accuracy {100 * chosen['accuracy']:.1f}% against "
            f"{100 * v['reference_accuracy']:.1f}% for the reference on the same items "
            f"({100 * v['delta']:+.1f} pts, p = {v['p_value']:.3g}), "
            f"{chosen['mean_tokens']:.0f} mean tokens{length}"
        )
    else:
        lines.append("chosen: none; every point is significantly less accurate than the reference")
    return {
        "rule": rule,
        "statement": statement,
        "alpha": alpha,
        "chosen": None if chosen is None else chosen["id"],
        "eligible": [p["id"] for p in eligible],
        "rejected": [p["id"] for p in rejected],
        "lines": lines,
    }


def _pts(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:+.1f}"


def _ratio(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"
