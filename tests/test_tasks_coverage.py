"""Coverage figures as pure functions: per item, per task and per group."""

from __future__ import annotations

import pytest

from l2smerge.eval.coverage import (
    coverage_fields,
    coverage_metrics,
    dropped_points,
    macro_average,
    mean_interval,
    per_group,
)
from l2smerge.eval.judges import COVERED, MISSED, UNSUPPORTED, Judgement, PointVerdict
from l2smerge.eval.metrics import wilson_interval
from l2smerge.eval.tasks import KeyPoint

POINTS = (KeyPoint("a", ("a",)), KeyPoint("b", ("b",)), KeyPoint("c", ("c",)))


def judged(*statuses: str) -> Judgement:
    return Judgement(tuple(PointVerdict(p.text, s) for p, s in zip(POINTS, statuses, strict=True)))


def test_item_fields():
    fields = coverage_fields(judged(COVERED, MISSED, UNSUPPORTED), POINTS)
    assert fields["covered_points"] == ["a"] and fields["coverage"] == pytest.approx(1 / 3)
    assert fields["full_coverage"] is False and fields["judge_error"] is None
    assert fields["verdicts"][2] == {"point": "c", "status": UNSUPPORTED}
    assert dropped_points({**fields}) == ["b", "c"]
    full = coverage_fields(judged(COVERED, COVERED, COVERED), POINTS)
    assert full["coverage"] == 1.0 and full["full_coverage"] is True and dropped_points(full) == []


def test_judge_error_is_neither_pass_nor_miss():
    fields = coverage_fields(Judgement(None, error="malformed judge output"), POINTS)
    assert fields["coverage"] is None and fields["full_coverage"] is None
    assert fields["judge_error"] == "malformed judge output" and dropped_points(fields) is None


def test_mean_interval():
    assert mean_interval([]) is None
    values = [1.0, 0.5, 0.75, 1.0, 0.25]
    assert mean_interval(values) == list(wilson_interval(3.5, 5))
    # one key point per item: exactly the Wilson interval of the share covered
    assert mean_interval([1.0, 0.0, 1.0, 1.0]) == list(wilson_interval(3, 4))
    # every item fully covered still leaves a width that shrinks with n
    lo5, hi5 = mean_interval([1.0] * 5)
    lo50, hi50 = mean_interval([1.0] * 50)
    assert hi5 == hi50 == 1.0 and lo5 < lo50 < 1.0
    assert mean_interval([0.5]) == list(wilson_interval(0.5, 1))


def record(bench, coverage, tokens, group=None, points=3):
    covered = round(coverage * points) if coverage is not None else None
    out = {
        "bench": bench,
        "tokens": tokens,
        "key_points": [str(i) for i in range(points)],
        "covered_points": None if covered is None else [str(i) for i in range(covered)],
        "coverage": None if coverage is None else covered / points,
        "full_coverage": None if coverage is None else covered == points,
        "truncated": tokens == 100,
    }
    if group:
        out["group"] = group
    return out


def test_task_and_group_metrics():
    records = [
        record("faq", 1.0, 10, "billing"),
        record("faq", 2 / 3, 20, "billing"),
        record("faq", 1 / 3, 30, "returns"),
        record("faq", None, 100, "returns"),  # a judge error
        record("howto", 1.0, 40),
    ]
    faq = coverage_metrics(records[:4])
    assert faq["n"] == 4 and faq["judged"] == 3 and faq["judge_errors"] == 1
    assert faq["mean_coverage"] == pytest.approx(2 / 3)
    assert faq["coverage_ci95"] == mean_interval([1.0, 2 / 3, 1 / 3])
    assert faq["full_coverage_ratio"] == pytest.approx(1 / 3)
    assert faq["full_coverage_ci95"][0] < 1 / 3 < faq["full_coverage_ci95"][1]
    assert (faq["key_points"], faq["covered_points"]) == (9, 6)
    assert (
        faq["mean_tokens"] == 40 and faq["median_tokens"] == 25 and faq["truncated_ratio"] == 0.25
    )
    groups = per_group(records)
    assert list(groups) == ["billing", "returns", "howto"]  # no group: the task's name
    assert groups["billing"]["mean_coverage"] == pytest.approx(5 / 6)
    assert groups["returns"]["judged"] == 1 and groups["returns"]["judge_errors"] == 1
    average = macro_average({"faq": faq, "howto": coverage_metrics(records[4:])})
    assert average["mean_coverage"] == pytest.approx((2 / 3 + 1) / 2)
    assert average["n"] == 5 and average["judge_errors"] == 1 and average["tasks"] == 2


def test_all_judge_errors():
    metrics = coverage_metrics([record("faq", None, 5)])
    assert metrics["mean_coverage"] is None and metrics["coverage_ci95"] is None
    assert metrics["full_coverage_ratio"] is None and metrics["judge_errors"] == 1
    assert macro_average({"faq": metrics})["mean_coverage"] is None
