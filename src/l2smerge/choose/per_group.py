"""Choosing a merge per task group: for each group of a free-form task, the shortest point of
a sweep whose key-point coverage is not significantly below the reference's on that group's
items ("tune the ratio per task"). Pure functions on results.jsonl records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from l2smerge.choose.coverage_ab import Pair
from l2smerge.choose.stats import sign_flip_p_value, stratified_bootstrap
from l2smerge.eval.coverage import group_of

Records = dict[tuple[str, Any], dict[str, Any]]
# (delta, its 95% interval, p-value) -> whether the point is significantly worse
WorseRule = Callable[[float, list[float | None], float], bool]


def significantly_below(alpha: float = 0.05) -> WorseRule:
    def worse(delta: float, ci: list[float | None], p_value: float) -> bool:
        return delta < 0 and p_value < alpha

    return worse


def _group_pairs(reference: Records, records: Records) -> dict[str, list[Pair]]:
    """Per group, the (reference, point) records of items both judged with the same points."""
    groups: dict[str, list[Pair]] = {}
    for key, ref in reference.items():
        rec = records.get(key)
        if rec is None or "key_points" not in ref or ref.get("coverage") is None:
            continue
        if rec.get("coverage") is None or rec.get("key_points") != ref["key_points"]:
            continue
        groups.setdefault(group_of(ref), []).append((ref, rec))
    return groups


def _versus(pairs: list[Pair], resamples: int, seed: int) -> dict[str, Any]:
    deltas = np.array([b["coverage"] - a["coverage"] for a, b in pairs], dtype=float)
    tokens_a = [a.get("tokens") for a, _ in pairs]
    tokens_b = [b.get("tokens") for _, b in pairs]
    known = None not in tokens_a and None not in tokens_b
    lo, hi = stratified_bootstrap(
        [[deltas]], lambda s: s[0][0].mean(axis=-1), resamples=resamples, seed=seed
    )
    return {
        "n": len(pairs),
        "reference_coverage": float(np.mean([a["coverage"] for a, _ in pairs])),
        "coverage": float(np.mean([b["coverage"] for _, b in pairs])),
        "delta": float(deltas.mean()),
        "delta_ci95": [float(lo), float(hi)],
        "p_value": sign_flip_p_value([deltas], seed=seed),
        "reference_mean_tokens": float(np.mean(tokens_a)) if known else None,
        "mean_tokens": float(np.mean(tokens_b)) if known else None,
    }


def choose_per_group(
    reference: Records,
    points: Sequence[dict[str, Any]],
    *,
    worse: WorseRule | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """`points`: [{"id", "label", "records"}]. For each group: every point's paired figures
    against the reference, and the chosen point (fewest mean tokens among those not
    significantly worse; ties: higher coverage), or None."""
    worse = worse or significantly_below()
    by_group: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        for group, pairs in _group_pairs(reference, point["records"]).items():
            row = _versus(pairs, resamples, seed)
            row.update(id=point["id"], label=point["label"])
            row["worse"] = worse(row["delta"], row["delta_ci95"], row["p_value"])
            by_group.setdefault(group, []).append(row)
    groups: dict[str, Any] = {}
    for group, rows in by_group.items():
        eligible = [r for r in rows if not r["worse"] and r["mean_tokens"] is not None]
        chosen = min(eligible, key=lambda r: (r["mean_tokens"], -r["coverage"]), default=None)
        groups[group] = {"points": rows, "chosen": None if chosen is None else chosen["id"]}
    return {"groups": groups}


def choices_table(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the table of choices: group, n, reference coverage and tokens, the chosen
    point, its coverage (delta, p) and tokens (ratio)."""
    rows = [["group", "n", "reference", "chosen", "coverage (Δ, p)", "tokens (× ref)"]]
    for group, g in result["groups"].items():
        chosen = next((r for r in g["points"] if r["id"] == g["chosen"]), None)
        any_row = g["points"][0]
        ref = f"{100 * any_row['reference_coverage']:.1f}%"
        if any_row["reference_mean_tokens"] is not None:
            ref += f", {any_row['reference_mean_tokens']:.0f} tok"
        if chosen is None:
            rows.append([group, str(any_row["n"]), ref, "none", "–", "–"])
            continue
        ratio = f"{chosen['mean_tokens']:.0f}"
        if chosen["reference_mean_tokens"]:
            ratio += f" (×{chosen['mean_tokens'] / chosen['reference_mean_tokens']:.2f})"
        rows.append(
            [
                group,
                str(chosen["n"]),
                ref,
                chosen["label"],
                f"{100 * chosen['coverage']:.1f}% ({100 * chosen['delta']:+.1f}, "
                f"p = {chosen['p_value']:.3g})",
                ratio,
            ]
        )
    return rows
