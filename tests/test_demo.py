"""A reduced `l2smerge demo` (5 items, two methods) on the bundled lab pair, end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from l2smerge.cli import app
from l2smerge.lab import PAIR_DIR

pytestmark = pytest.mark.skipif(
    not (PAIR_DIR / "system2" / "config.json").exists(), reason="bundled lab pair not built"
)


def test_reduced_demo_writes_runs_report_and_plot(tmp_path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--limit", "5", "--methods", "average,ties", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for label in ("system1", "system2", "average", "ties"):
        summary = json.loads((out / "runs" / label / "summary.json").read_text())
        assert summary["benchmarks"]["lab"]["n"] == 5
        assert len((out / "runs" / label / "results.jsonl").read_text().splitlines()) == 5
    assert (
        json.loads((out / "runs" / "system2" / "summary.json").read_text())["benchmarks"]["lab"][
            "reflective_ratio"
        ]
        == 1.0
    )
    report = (out / "report.md").read_text()
    assert "ties" in report and "system2" in report
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert "lab benchmark" in result.output  # the printed table

    # rerunning resumes: nothing is merged or generated again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already finished" in again.output


def test_unknown_method_is_one_clear_error(tmp_path) -> None:
    from l2smerge.lab.demo import demo_points
    from l2smerge.util.errors import L2SError

    with pytest.raises(L2SError, match="unknown method 'nope'"):
        demo_points(["ties", "nope"])
    labels = [label for label, _ in demo_points(["task_arithmetic", "ties"])]
    assert labels[:5] == [f"task_arithmetic-a{a}" for a in ("0.5", "0.6", "0.7", "0.8", "0.9")]
    assert labels[5] == "ties"
