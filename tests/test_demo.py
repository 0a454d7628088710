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
    # 5 items cannot show a merge as accurate as System 2: the rule chooses none, and says so
    assert "chose no merge" in " ".join(result.output.split())

    # rerunning resumes: nothing is merged or generated again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already finished" in again.output


@pytest.mark.slow
def test_demo_on_every_item_chooses_a_merge_much_shorter_than_system2(tmp_path) -> None:
    # The study's result in miniature, on the whole lab benchmark: the sweep's default rule
    # finds a merge at System 2's accuracy (not shown worse by 2 points) at < 60% of its length.
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "-o", str(out), "--methods", "ties"])
    assert result.exit_code == 0, result.output
    selection = json.loads((out / "sweep" / "selection.json").read_text())
    assert selection["chosen"] is not None, selection["lines"]
    report = json.loads((out / "report.json").read_text())
    runs = {r["label"]: r for r in report["runs"]}
    ties, system2 = runs["ties"]["average"], runs["system2"]["average"]
    assert ties["n"] == system2["n"] == 250
    assert ties["accuracy"] >= system2["accuracy"] - 0.02
    assert runs["ties"]["length_change"] <= -0.4
    assert system2["reflective_ratio"] >= 0.95
    level5 = {k: r["levels"]["lab"]["5"]["accuracy"] for k, r in runs.items()}
    assert level5["system2"] - level5["system1"] >= 0.3
    assert "chose ties" in " ".join(result.output.split())


def test_unknown_method_is_one_clear_error(tmp_path) -> None:
    from l2smerge.lab.demo import demo_points
    from l2smerge.util.errors import L2SError

    with pytest.raises(L2SError, match="unknown method 'nope'"):
        demo_points(["ties", "nope"])
    labels = [label for label, _ in demo_points(["task_arithmetic", "ties"])]
    assert labels[:5] == [f"task_arithmetic-a{a}" for a in ("0.5", "0.6", "0.7", "0.8", "0.9")]
    assert labels[5] == "ties"
