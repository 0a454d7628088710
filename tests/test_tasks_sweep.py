"""A sweep over a free-form task on a constructed sweep: each point's "model" is a replayed
log built so that alpha 0.5 drops points in the billing group only and alpha 0.7 in the
returns group only. The sweep weighs coverage, chooses nothing overall (each point loses a
group) and a different point per group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import make_tiny_model

from l2smerge.choose.sweep import run_sweep
from l2smerge.eval import evaluate
from l2smerge.util.errors import L2SError

POINTS = ["refund", "receipt", "warranty"]
PER_GROUP = 100
TOKENS = {0.5: 40, 0.7: 60, "reference": 100}
# alpha -> the group where it drops "warranty" from every answer
DROPS = {0.5: "billing", 0.7: "returns"}


def write_task(path: Path) -> Path:
    rows = [
        {"id": f"{g}-{i}", "prompt": f"Question {i} about {g}?", "key_points": POINTS, "group": g}
        for g in ("returns", "billing")
        for i in range(PER_GROUP)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_log(path: Path, version: float | str) -> Path:
    rows = []
    for g in ("returns", "billing"):
        for i in range(PER_GROUP):
            said = [p for p in POINTS if not (p == "warranty" and DROPS.get(version) == g)]
            text = "We cover: " + ", ".join(said) + "."
            rows.append({"task": "faq", "id": f"{g}-{i}", "response": text,
                         "tokens": TOKENS[version]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_constructed_sweep_chooses_per_group(tmp_path, monkeypatch):
    import l2smerge.choose.sweep as sweep_module

    task = write_task(tmp_path / "faq.jsonl")
    reference = tmp_path / "reference"
    evaluate("current", None, tasks=[task], backend="replay", out_dir=reference,
             responses=write_log(tmp_path / "ref.jsonl", "reference"), progress=False)  # fmt: skip

    def replayed(spec_data, key, point_dir, progress):
        alpha = key["parameters"]["alpha"]
        run_dir = Path(point_dir) / "run"
        log = write_log(tmp_path / f"a{alpha}.jsonl", alpha)
        evaluate(f"alpha={alpha}", None, tasks=[task], backend="replay", out_dir=run_dir,
                 responses=log, progress=False)  # fmt: skip
        return {"run_dir": str(run_dir), "model_dir": None}

    monkeypatch.setattr(sweep_module, "merge_and_evaluate", replayed)
    base = make_tiny_model(tmp_path / "s1", seed=0, hidden=16, layers=1)
    spec = {
        "base": str(base),
        "models": [str(base), str(base)],
        "grid": [{"method": "task_arithmetic", "alpha": [0.5, 0.7]}],
        "eval": {"tasks": [str(task)], "backend": "hf"},
        "reference": {"run": str(reference), "label": "current"},
        "selection": {"per_group": True, "margin": 5},
    }
    result = run_sweep(spec, tmp_path / "sweep", progress=False)

    selection = result["selection"]
    assert "coverage is shown within 5.0 points" in selection["statement"]
    assert selection["chosen"] is None  # each point loses a third of one group's points
    points = {r["label"]: r for r in result["points"]}
    half = points["task_arithmetic(alpha=0.5)"]
    assert half["coverage"] == pytest.approx(1 - 0.5 / 3)
    assert half["vs_reference_coverage"]["delta"] == pytest.approx(-0.5 / 3)
    pareto = json.loads((tmp_path / "sweep" / "pareto.json").read_text())
    assert pareto["objectives"].startswith("maximise macro coverage")
    assert pareto["reference"]["accuracy"] == 1.0

    per_group = json.loads((tmp_path / "sweep" / "selection_per_group.json").read_text())
    chosen = {g: r["chosen"] for g, r in per_group["groups"].items()}
    by_id = {r["id"]: r["label"] for r in result["points"]}
    assert {g: by_id[c] for g, c in chosen.items()} == {
        "returns": "task_arithmetic(alpha=0.5)",
        "billing": "task_arithmetic(alpha=0.7)",
    }
    report = json.loads((tmp_path / "sweep" / "report" / "report.json").read_text())
    assert report["plots"]["coverage_vs_tokens"] == "coverage_vs_tokens.png"
    assert report["coverage_pareto_front"]


def test_coverage_selection_needs_tasks(tmp_path):
    spec = {
        "models": [str(tmp_path / "a")],
        "grid": [{"method": "average"}],
        "eval": {"benches": ["gsm8k"]},
        "selection": {"per_group": True},
    }
    with pytest.raises(L2SError, match="needs free-form tasks"):
        run_sweep(spec, tmp_path / "sweep", progress=False)
    spec["eval"] = {}
    with pytest.raises(L2SError, match="give benches .* or tasks"):
        run_sweep(spec, tmp_path / "sweep", progress=False)
