"""The one metrics layer: per-group figures, intervals, level order and reflection counts,
the same in summary.json, compare, report and sweep."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from run_fixtures import write_run

from l2smerge.eval.metrics import (
    bench_figures,
    group_figures,
    level_key,
    macro_average,
    macro_interval,
    ordered_benches,
    wilson_interval,
)
from l2smerge.eval.reflection import count_reflections, study_reflections

SRC = Path(__file__).resolve().parents[1] / "src" / "l2smerge"


def _record(correct, tokens=10, response="x", **extra):
    return {
        "bench": "gsm8k",
        "id": 0,
        "correct": correct,
        "tokens": tokens,
        "truncated": False,
        "reflective": count_reflections(response) > 0,
        "reflections": count_reflections(response),
        "response": response,
        **extra,
    }


def test_one_wilson_interval_and_one_z_in_the_source():
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    wilson = [p for p, text in sources.items() if re.search(r"def \w*wilson\w*\(", text)]
    assert [p.relative_to(SRC).as_posix() for p in wilson] == ["eval/metrics.py"]
    z_constants = [p for p, text in sources.items() if re.search(r"1\.9599\d+", text)]
    assert [p.relative_to(SRC).as_posix() for p in z_constants] == ["eval/metrics.py"]
    level_sorts = [p for p, text in sources.items() if re.search(r"def _?(lk|level_key)\(", text)]
    assert [p.relative_to(SRC).as_posix() for p in level_sorts] == ["eval/metrics.py"]


def test_wilson_and_macro_intervals():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # an empty group rules nothing out
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    # one estimate: its own interval; benchmarks all at 0%: a real width, not 0 ± 0
    assert macro_interval([0.5], [(0.3, 0.6)]) == pytest.approx((0.3, 0.6))
    zeros = macro_interval([0.0] * 4, [wilson_interval(0, 10)] * 4)
    assert zeros[0] == 0.0 and zeros[1] == pytest.approx(0.2775 / 2, abs=1e-4)
    # MOVER by hand for two benchmarks
    lo, hi = macro_interval([0.2, 0.6], [(0.1, 0.4), (0.5, 0.65)])
    assert lo == pytest.approx(0.4 - ((0.1**2 + 0.1**2) ** 0.5) / 2)
    assert hi == pytest.approx(0.4 + ((0.2**2 + 0.05**2) ** 0.5) / 2)


def test_group_figures_tokens_are_all_or_nothing():
    records = [_record(True, 10), _record(False, None), _record(True, 30)]
    g = group_figures(records)
    assert g["n"] == 3 and g["accuracy"] == pytest.approx(2 / 3)
    assert g["mean_tokens"] is None and g["median_tokens"] is None
    assert g["tokens_missing"] == 1  # said, never averaged over the other two
    full = group_figures([_record(True, 10), _record(True, 30)])
    assert full["mean_tokens"] == 20 and full["tokens_missing"] == 0
    assert group_figures([])["accuracy"] is None


def test_levels_in_numeric_order():
    records = [_record(True, level=lv) for lv in (10, 2, 1, "hard")]
    assert list(bench_figures(records)["per_level"]) == ["1", "2", "10", "hard"]
    assert sorted(["10", "9", "x"], key=level_key) == ["9", "10", "x"]
    assert ordered_benches(["zeta", "math500", "gsm8k", "aime24"]) == [
        "gsm8k",
        "math500",
        "aime24",
        "zeta",
    ]


def test_reflection_ours_and_the_studys():
    text = "I awaited the answer. Waiting... let me verify. Let me just check."
    assert count_reflections(text) == 2  # whole words: "let me verify", "let me just check"
    assert study_reflections(text) == 3  # substrings: "wait" x2, "let me just check"
    responses = ["Wait, wait. recap", "plain answer", "double-check it"]
    g = group_figures([_record(True, response=r) for r in responses])
    assert g["reflective_ratio"] == pytest.approx(2 / 3)
    assert g["study_reflective_ratio"] == pytest.approx(2 / 3)
    # the study's frequency is over reflective responses only: (3 + 1) / 2
    assert g["study_reflections_per_reflective"] == 2.0
    assert g["reflections_per_response"] == pytest.approx(4 / 3)
    none = group_figures([_record(True, response="no")])
    assert none["study_reflections_per_reflective"] is None
    assert none["study_reflective_ratio"] == 0.0


def test_macro_average_interval_and_missing_fields():
    per = {
        "gsm8k": bench_figures([_record(False) for _ in range(10)]),
        "math500": bench_figures([_record(False) for _ in range(10)]),
    }
    avg = macro_average(per)
    assert avg["accuracy"] == 0.0 and avg["accuracy_ci95"][1] > 0.15  # not "0.0 ± 0.0"
    assert avg["n"] == 20 and avg["benchmarks"] == 2


def test_summary_report_compare_and_sweep_agree(tmp_path):
    """The same figure from every consumer: report's per-benchmark numbers are summary.json's,
    and report's length change is compare's, measured on the items both runs evaluated."""
    from l2smerge.choose.compare import write_compare
    from l2smerge.choose.report import write_report
    from l2smerge.eval.metrics import summarize
    from l2smerge.eval.runs import load_run

    rows_a = [{"bench": "gsm8k", "id": i, "correct": i % 3 > 0, "tokens": 100} for i in range(30)]
    rows_b = [
        {"bench": "gsm8k", "id": i, "correct": i % 2 > 0, "tokens": 40 + i} for i in range(40)
    ]  # B also evaluated 10 items A did not
    a, b = write_run(tmp_path / "system2", rows_a), write_run(tmp_path / "b", rows_b)
    report = write_report([a, b], tmp_path / "r")
    cmp = write_compare(a, b, tmp_path / "c", resamples=50)
    runs = {r["label"]: r for r in report["runs"]}
    assert runs["b"]["length_change"] == pytest.approx(cmp["average"]["tokens_ratio"] - 1)
    assert runs["b"]["length_change"] == pytest.approx((40 + 14.5) / 100 - 1)
    summary = summarize("b", load_run(b).records.values(), ["gsm8k"])
    assert runs["b"]["benchmarks"]["gsm8k"]["accuracy_ci95"] == pytest.approx(
        summary["benchmarks"]["gsm8k"]["accuracy_ci95"]
    )
    assert runs["b"]["average"]["accuracy_ci95"] == pytest.approx(
        summary["average"]["accuracy_ci95"]
    )
