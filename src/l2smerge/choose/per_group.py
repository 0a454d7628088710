"""Choosing a merge per task group: for each group of a free-form task, the shortest point of
a sweep whose key-point coverage is *shown* to be within `margin` points of the reference's
on that group's items ("tune the ratio per task"). The rule is the sweep's
shortest_noninferior (choose/selection.py) applied to one group: eligible when the lower end
of the 95% interval of the coverage delta (point − reference; Tango's paired score interval
on fractional counts, choose/coverage_ab.py) is above −margin. Pure functions on
results.jsonl records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from l2smerge.choose.coverage_ab import Pair, is_freeform, versus
from l2smerge.choose.selection import DEFAULT_MARGIN
from l2smerge.eval.coverage import group_of

Records = dict[tuple[str, Any], dict[str, Any]]


def _group_pairs(reference: Records, records: Records) -> dict[str, list[Pair]]:
    """Per group, the (reference, point) records of items both judged with the same points."""
    groups: dict[str, list[Pair]] = {}
    for key, ref in reference.items():
        rec = records.get(key)
        if rec is None or not is_freeform(ref) or ref.get("coverage") is None:
            continue
        if rec.get("coverage") is None or rec.get("key_points") != ref["key_points"]:
            continue
        groups.setdefault(group_of(ref), []).append((ref, rec))
    return groups


def choose_per_group(
    reference: Records, points: Sequence[dict[str, Any]], *, margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    """`points`: [{"id", "label", "records"}]; `margin` in points of coverage. For each
    group: every point's paired figures against the reference, and the chosen point (fewest
    mean tokens among the eligible; ties: higher coverage), or None."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        for group, pairs in _group_pairs(reference, point["records"]).items():
            v = versus(pairs)
            row = {
                "id": point["id"],
                "label": point["label"],
                "n": v["n"],
                "reference_coverage": v["mean_coverage_a"],
                "coverage": v["mean_coverage_b"],
                "delta": v["delta"],
                "delta_ci95": v["delta_ci95"],
                "p_value": v["p_value"],
                "points_dropped": v["points_dropped"],
                "reference_mean_tokens": v["mean_tokens_a"],
                "mean_tokens": v["mean_tokens_b"],
            }
            row["eligible"] = row["delta_ci95"][0] > -margin / 100
            by_group.setdefault(group, []).append(row)
    groups: dict[str, Any] = {}
    for group, rows in by_group.items():
        eligible = [r for r in rows if r["eligible"] and r["mean_tokens"] is not None]
        chosen = min(eligible, key=lambda r: (r["mean_tokens"], -r["coverage"]), default=None)
        groups[group] = {"points": rows, "chosen": None if chosen is None else chosen["id"]}
    statement = (
        "per task group, the shortest merge whose coverage is shown within "
        f"{margin:g} points of the reference's on that group's items (lower end of the 95% "
        f"interval of the coverage delta above −{margin:g} points)"
    )
    return {"rule": "shortest_noninferior per group", "statement": statement,
            "margin": margin, "groups": groups}  # fmt: skip


def choices_table(result: dict[str, Any]) -> list[list[str]]:
    """The table of choices, header first: group, n, reference coverage and tokens, the
    chosen point, its coverage (delta, lower bound) and tokens (× reference)."""
    rows = [["group", "n", "reference", "chosen", "coverage (Δ, 95% lower)", "tokens (× ref)"]]
    for group, g in result["groups"].items():
        first = g["points"][0]
        ref = f"{100 * first['reference_coverage']:.1f}%"
        if first["reference_mean_tokens"] is not None:
            ref += f", {first['reference_mean_tokens']:.0f} tok"
        chosen = next((r for r in g["points"] if r["id"] == g["chosen"]), None)
        if chosen is None:
            best = max(g["points"], key=lambda r: r["delta_ci95"][0])
            rows.append(
                [group, str(first["n"]), ref, "none",
                 f"closest: {best['label']} (lower {100 * best['delta_ci95'][0]:+.1f})", "–"]
            )  # fmt: skip
            continue
        tokens = f"{chosen['mean_tokens']:.0f}"
        if chosen["reference_mean_tokens"]:
            tokens += f" (×{chosen['mean_tokens'] / chosen['reference_mean_tokens']:.2f})"
        rows.append(
            [
                group,
                str(chosen["n"]),
                ref,
                chosen["label"],
                f"{100 * chosen['coverage']:.1f}% ({100 * chosen['delta']:+.1f}, "
                f"{100 * chosen['delta_ci95'][0]:+.1f})",
                tokens,
            ]
        )
    return rows
