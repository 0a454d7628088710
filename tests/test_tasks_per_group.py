"""Per-group choice of a merge on a constructed sweep: the shortest point that keeps a group's
coverage wins that group, so different groups can get different points."""

from __future__ import annotations

import pytest

from l2smerge.choose.per_group import choices_table, choose_per_group

POINTS = ["a", "b", "c"]


def records(coverage_by_group: dict[str, float], tokens: dict[str, int], n: int = 100) -> dict:
    out = {}
    for group, coverage in coverage_by_group.items():
        for i in range(n):
            # drop points deterministically so that the mean is `coverage`
            k = round(coverage * 3 * n)
            covered = POINTS[: k // n + (1 if i < k % n else 0)]
            out[("faq", f"{group}-{i}")] = {
                "bench": "faq",
                "id": f"{group}-{i}",
                "group": group,
                "key_points": POINTS,
                "covered_points": covered,
                "coverage": len(covered) / 3,
                "full_coverage": len(covered) == 3,
                "tokens": tokens[group],
            }
    return out


def test_each_group_gets_its_own_point():
    reference = records({"returns": 1.0, "billing": 1.0}, {"returns": 100, "billing": 100})
    points = [
        # shortest: keeps returns, loses a third of billing's points
        {"id": "p1", "label": "alpha=0.5",
         "records": records({"returns": 1.0, "billing": 2 / 3}, {"returns": 40, "billing": 40})},
        # medium: keeps both
        {"id": "p2", "label": "alpha=0.7",
         "records": records({"returns": 1.0, "billing": 1.0}, {"returns": 70, "billing": 60})},
        # longest: keeps both
        {"id": "p3", "label": "alpha=0.9",
         "records": records({"returns": 1.0, "billing": 1.0}, {"returns": 90, "billing": 90})},
    ]  # fmt: skip
    result = choose_per_group(reference, points, margin=5)
    assert {g: r["chosen"] for g, r in result["groups"].items()} == {
        "returns": "p1",
        "billing": "p2",
    }
    billing = {r["id"]: r for r in result["groups"]["billing"]["points"]}
    assert not billing["p1"]["eligible"] and billing["p1"]["p_value"] < 0.001
    assert billing["p2"]["eligible"] and billing["p2"]["delta"] == 0
    # no difference on 100 items still leaves an interval (Tango: ±z²/(n + z²))
    assert billing["p2"]["delta_ci95"][0] == pytest.approx(-(1.96**2) / (100 + 1.96**2), abs=1e-3)
    table = choices_table(result)
    assert table[0][0] == "group"
    assert table[1][:4] == ["returns", "100", "100.0%, 100 tok", "alpha=0.5"]
    assert table[2][3] == "alpha=0.7" and table[2][5] == "60 (×0.60)"
    # the default 2-point margin cannot be shown with 100 items per group: nothing chosen
    strict = choose_per_group(reference, points)
    assert all(g["chosen"] is None for g in strict["groups"].values())


def test_no_point_good_enough():
    reference = records({"returns": 1.0}, {"returns": 100})
    points = [{"id": "p1", "label": "short", "records": records({"returns": 0.5}, {"returns": 10})}]
    result = choose_per_group(reference, points)
    assert result["groups"]["returns"]["chosen"] is None
    assert choices_table(result)[1][3] == "none"
    assert choices_table(result)[1][4].startswith("closest: short")
