"""The coverage A/B on records built so that B drops known key points."""

from __future__ import annotations

import random

import pytest

from l2smerge.choose.coverage_ab import coverage_comparison, render_coverage_markdown


def rec(task, item_id, points, covered, tokens, group=None, error=False):
    out = {"bench": task, "id": item_id, "key_points": points, "tokens": tokens}
    if group:
        out["group"] = group
    if error:
        out.update(covered_points=None, coverage=None, full_coverage=None, judge_error="x")
    else:
        out.update(
            covered_points=[p for p in points if p in covered],
            coverage=len(covered) / len(points),
            full_coverage=len(covered) == len(points),
        )
    return out


def pairs_with_known_drops(n=40, seed=1):
    """A covers every point; B drops "warranty" in every other item and "receipt" in every
    fifth, and gains nothing; one item each side has a judge error."""
    rng = random.Random(seed)
    points = ["refund in 30 days", "receipt", "warranty"]
    pairs = []
    for i in range(n):
        covered_b = set(points)
        if i % 2 == 0:
            covered_b.discard("warranty")
        if i % 5 == 0:
            covered_b.discard("receipt")
        group = "returns" if i < n // 2 else "billing"
        a = rec("faq", f"q{i}", points, set(points), rng.randint(80, 120), group)
        b = rec("faq", f"q{i}", points, covered_b, rng.randint(30, 60), group)
        pairs.append((a, b))
    pairs.append(
        (rec("faq", "ea", points, set(), 5, error=True), rec("faq", "ea", points, set(), 5))
    )
    pairs.append(
        (rec("faq", "eb", points, set(), 5), rec("faq", "eb", points, set(), 5, error=True))
    )
    other = rec("faq", "kp", ["x"], {"x"}, 5)
    pairs.append((other, rec("faq", "kp", ["x", "y"], {"x"}, 5)))
    return pairs


def test_dropped_points_are_named_and_ranked():
    result = coverage_comparison(pairs_with_known_drops())
    faq = result["tasks"]["faq"]
    assert faq["n"] == 40
    assert result["skipped"] == {"judge_error_a": 1, "judge_error_b": 1, "key_points_differ": 1}
    assert faq["points_dropped"] == 20 + 8 and faq["points_gained"] == 0
    assert faq["items_with_drops"] == 24  # even ids, plus 5, 15, 25, 35
    assert faq["mean_coverage_a"] == 1.0
    assert faq["delta"] == pytest.approx(-(20 + 8) / 3 / 40)
    lo, hi = faq["delta_ci95"]
    assert lo < faq["delta"] < hi < 0
    assert faq["p_value"] < 0.001
    ranking = result["dropped_ranking"]
    assert [(r["point"], r["lost"], r["covered_by_a"]) for r in ranking] == [
        ("warranty", 20, 40),
        ("receipt", 8, 40),
    ]
    assert ranking[0]["loss_rate"] == 0.5
    items = {c["id"]: c for c in result["items"]}
    assert items["q0"]["dropped"] == ["receipt", "warranty"] and items["q5"]["dropped"] == [
        "receipt"
    ]
    assert "q1" not in items
    assert set(result["groups"]) == {"returns", "billing"}
    assert result["average"]["delta"] == faq["delta"]


def test_no_difference_is_not_significant():
    points = ["a", "b"]
    pairs = [
        (rec("t", i, points, {"a"} if i % 2 else {"b"}, 10),
         rec("t", i, points, {"b"} if i % 2 else {"a"}, 10))
        for i in range(30)
    ]  # fmt: skip
    result = coverage_comparison(pairs)
    assert result["tasks"]["t"]["delta"] == 0 and result["tasks"]["t"]["p_value"] == 1.0
    assert result["tasks"]["t"]["points_dropped"] == 30 == result["tasks"]["t"]["points_gained"]


def test_markdown_names_every_dropped_point():
    result = coverage_comparison(pairs_with_known_drops())
    text = render_coverage_markdown(result, "s2", "merged")
    assert "| warranty | 20 | 40 | 50% |" in text
    assert "- faq `q0`: coverage 100.0 → 33.3; dropped: “receipt”; “warranty”" in text
    assert text.count("dropped: ") == 24
    assert "### By group" in text and "judge error in A (1) or B (1)" in text
