import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from run_fixtures import write_run
from tiny import make_tiny_model

from l2smerge.choose.selection import choose
from l2smerge.choose.sweep import run_sweep
from l2smerge.choose.sweep_spec import expand_points, parse_sweep
from l2smerge.util.errors import L2SError


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pair")
    base = make_tiny_model(root / "system1", seed=0, hidden=16, layers=1)
    system2 = make_tiny_model(root / "system2", base=base, seed=1, noise=0.05)
    return {"system1": base, "system2": system2}


def _spec(pair, data_dir, **extra) -> dict:
    spec = {
        "base": str(pair["system1"]),
        "models": [str(pair["system1"]), str(pair["system2"])],
        "merge": {"dtype": "float32"},
        "grid": [{"method": "task_arithmetic", "alpha": [0.5, 1.0]}],
        "points": [{"method": "ties", "alpha": 1.0, "density": 0.2}],
        "eval": {
            "benches": ["gsm8k"],
            "backend": "hf",
            "data_dir": str(data_dir),
            "limit": 2,
            "max_tokens": 6,
        },
        "reference": {"model": str(pair["system2"]), "label": "system2"},
    }
    spec.update(extra)
    return spec


def test_sweep_end_to_end_resumes_without_redoing_points(pair, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    import l2smerge.choose.sweep as sweep_module

    calls = []
    interrupt_at = [2]
    real = sweep_module.merge_and_evaluate

    def counting(spec_data, key, point_dir, progress):
        calls.append(Path(point_dir).name)
        if len(calls) == interrupt_at[0]:
            raise Interrupted  # the sweep is killed during the second point
        return real(spec_data, key, point_dir, progress)

    monkeypatch.setattr(sweep_module, "merge_and_evaluate", counting)
    with pytest.raises(Interrupted):
        run_sweep(_spec(pair, data_dir), out, progress=False)
    lines = (out / "points.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the first point finished and was recorded
    first = json.loads(lines[0])

    calls.clear()
    interrupt_at[0] = None
    baseline = {
        "model": str(pair["system1"]),
        "label": "system1",
        "prompt": "fewshot",
        "max_tokens": 4,
    }
    result = run_sweep(_spec(pair, data_dir, baselines=[baseline]), out, progress=False)
    assert first["id"] not in calls and len(calls) == 2  # finished point not redone
    records = [json.loads(x) for x in (out / "points.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["model_dir"] is None  # merged checkpoints deleted after evaluation
        assert not (out / "points" / r["id"] / "model").exists()
        run = Path(r["run_dir"])
        assert len((run / "results.jsonl").read_text().splitlines()) == 2
        assert r["vs_reference"]["n"] == 2
        assert 0 <= r["accuracy"] <= 1 and r["mean_tokens"] > 0
    assert {r["label"] for r in records} == {
        "task_arithmetic(alpha=0.5)",
        "task_arithmetic(alpha=1)",
        "ties(alpha=1,density=0.2)",
    }
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["front"] and set(pareto["front"]) <= {r["id"] for r in records}
    assert pareto["reference"]["label"] == "system2"
    selection = json.loads((out / "selection.json").read_text())
    assert selection["rule"] == "shortest_not_worse"
    # two items cannot make any point significantly worse, so the shortest is chosen
    shortest = min(records, key=lambda r: (r["mean_tokens"], -r["accuracy"]))
    assert selection["chosen"] == shortest["id"]
    assert (out / "reference" / "system2" / "results.jsonl").exists()
    assert (out / "report" / "report.html").exists()
    system1 = json.loads((out / "baselines" / "system1" / "run.json").read_text())
    assert system1["prompt"] == "fewshot" and system1["max_tokens"] == 4
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["label"] for r in report["runs"]][:2] == ["system1", "system2"]
    assert report["reference"] == "system2"
    assert result["selection"]["chosen"] == selection["chosen"]

    calls.clear()
    run_sweep(_spec(pair, data_dir), out, progress=False)
    assert calls == []  # a finished sweep does nothing again

    # dropping a point from the file: it stays recorded but leaves the front and selection
    fewer = run_sweep(_spec(pair, data_dir, points=[]), out, progress=False)
    assert calls == [] and len(fewer["points"]) == 2
    assert len((out / "points.jsonl").read_text().splitlines()) == 3
    # other evaluation settings are refused instead of mixed into one front
    changed = _spec(pair, data_dir)
    changed["eval"]["limit"] = 3
    with pytest.raises(L2SError, match="different eval"):
        run_sweep(changed, out, progress=False)


def test_keep_models_and_a_calibrated_preset(pair, data_dir, tmp_path):
    calibration = tmp_path / "calibration.jsonl"
    sample = {"question": "1+1?", "short_answer": "2", "long_answer": "Wait, 1+1 = 2."}
    calibration.write_text(json.dumps(sample) + "\n")
    merge = {"dtype": "float32", "calibration": str(calibration)}
    spec = _spec(
        pair,
        data_dir,
        keep_models=True,
        grid=[],
        reference=None,
        report=False,
        points=[{"preset": "aim_ties@7b"}],
        merge=merge,
    )
    result = run_sweep(spec, tmp_path / "s", progress=False)
    (record,) = result["points"]
    assert record["label"] == "aim_ties@7b"
    provenance = (Path(record["model_dir"]) / "l2smerge.json").read_text()
    assert "aim" in provenance and "ties" in provenance
    assert result["selection"]["rule"] == "most_accurate"


def test_selection_rule_numbers():
    def point(pid, acc, tokens, delta, p):
        return {
            "id": pid,
            "label": pid,
            "accuracy": acc,
            "mean_tokens": tokens,
            "vs_reference": {
                "delta": delta,
                "p_value": p,
                "delta_ci95": [delta - 0.1, delta + 0.1],
                "n": 100,
                "tokens_ratio": tokens / 1000,
                "reference_accuracy": acc - delta,
            },
        }

    pts = [
        point("short-but-worse", 0.40, 300, -0.15, 0.001),
        point("short-ok", 0.52, 450, -0.03, 0.30),
        point("long-better", 0.58, 700, 0.03, 0.40),
    ]
    sel = choose(pts, has_reference=True)
    assert sel["chosen"] == "short-ok"
    assert sel["rejected"] == ["short-but-worse"]
    assert any("p < 0.05" in line for line in sel["lines"])
    assert "chosen: short-ok: accuracy 52.0% against 55.0%" in sel["lines"][-1]
    assert "-55.0% length" in sel["lines"][-1]
    assert choose(pts, has_reference=True, alpha=0.0001)["chosen"] == "short-but-worse"
    assert choose(pts, rule="most_accurate", has_reference=True)["chosen"] == "long-better"
    with pytest.raises(L2SError, match="needs a reference"):
        choose(pts, rule="shortest_not_worse", has_reference=False)


def test_grid_expansion_and_bad_keys(tmp_path):
    spec = {
        "models": ["a", "b"],
        "base": "a",
        "grid": {"method": ["ties", "dare_ties"], "alpha": [0.7, 1.0], "density": 0.2},
        "points": [{"preset": "ties@7b"}, {"method": "ties", "alpha": 1.0, "density": 0.2}],
        "eval": {"benches": "gsm8k,math500"},
    }
    parsed = parse_sweep(spec, tmp_path / "SWEEP.yaml")
    points = expand_points(parsed)
    # 1 preset + 1 listed + 4 grid, minus the grid's copy of the listed point
    assert len(points) == 5
    assert parsed.models[0] == (tmp_path / "a").resolve()
    assert parsed.eval.benches == ["gsm8k", "math500"]
    assert len({p.id for p in points}) == 5

    def bad(change: dict, match: str):
        with pytest.raises(L2SError, match=match):
            parse_sweep({**spec, **change}, tmp_path / "SWEEP.yaml")

    bad({"evall": {}}, r"SWEEP.yaml: evall: unknown key")
    bad({"eval": {"benches": ["gsm8k"], "limt": 3}}, r"eval.limt: unknown key")
    bad({"eval": {"benches": ["gsm8k"], "limit": 0}}, r"eval.limit")
    bad({"grid": {"method": ["ties"], "gamma": [1]}}, r"grid\[0\].gamma: not a parameter of ties")
    bad({"grid": {"method": ["nope"]}}, r"grid\[0\].method: unknown method 'nope'")
    bad({"points": [{"alpha": 1}]}, r"points\[0\].method: required")
    bad({"points": [{"preset": "ties@99b"}]}, r"points\[0\].preset: unknown preset")
    bad({"points": [{"method": "ties", "alpha": [0.5, 1]}]}, r"points\[0\].alpha: a list")
    bad({"grid": [], "points": []}, r"no merge to try")
    bad({"reference": {"label": "x"}}, r"reference: give exactly one")
    bad({"selection": {"rule": "best"}}, r"selection.rule")
    bad({"merge": {"dtyp": "float32"}}, r"merge.dtyp: unknown key \(known: .*dtype")
    bad({"merge": {"method": "ties"}}, r"merge.method: set it per point")
    bad({"selection": {"rule": "shortest_not_worse"}}, r"selection.rule: shortest_not_worse needs")


def test_cli_bad_sweep_file_names_key(tmp_path):
    f = tmp_path / "SWEEP.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "models": ["a"],
                "points": [{"method": "ties"}],
                "eval": {"benches": ["gsm8k"], "backend": "tpu"},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "l2smerge", "sweep", str(f), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "eval.backend" in proc.stderr and "SWEEP.yaml" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_existing_reference_run_is_checked(pair, data_dir, tmp_path):
    bad_run = write_run(
        tmp_path / "ref", [{"bench": "math500", "id": 0, "correct": 1, "tokens": 3}]
    )
    (bad_run / "results.jsonl").write_text("not json\n")
    spec = _spec(pair, data_dir, reference={"run": str(bad_run)})
    with pytest.raises(L2SError, match=r"ref/results.jsonl:1"):
        run_sweep(spec, tmp_path / "s", progress=False)


def test_adaptive_search_resumes_its_trials(pair, data_dir, tmp_path):
    pytest.importorskip("optuna")
    search = {"method": "task_arithmetic", "params": {"alpha": [0.2, 1.2]}, "trials": 2, "seed": 3}
    spec = _spec(pair, data_dir, grid=[], points=[], search=search, report=False)
    out = tmp_path / "s"
    first = run_sweep(spec, out, progress=False)
    assert len(first["points"]) == 2
    assert all(p["source"] == "search" for p in first["points"])
    assert all(0.2 <= p["parameters"]["alpha"] <= 1.2 for p in first["points"])
    before = {p["id"] for p in first["points"]}
    spec["search"]["trials"] = 4
    second = run_sweep(spec, out, progress=False)
    ids = {p["id"] for p in second["points"]}
    assert before <= ids and 3 <= len(ids) <= 4  # 2 new trials (a repeat proposal is reused)
    assert json.loads((out / "pareto.json").read_text())["front"]


@pytest.mark.slow  # Ray start-up and the worker's imports: ~30-60 s on 2 busy cores
def test_sweep_on_local_ray_with_cpu_workers(pair, data_dir, tmp_path):
    ray = pytest.importorskip("ray")
    spec = _spec(pair, data_dir, points=[], report=False)
    # One CPU worker: both points run in it one after the other (one torch import, not two).
    # run_sweep uses the running instance and shuts it down at the end.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    out = tmp_path / "s"
    result = run_sweep(spec, out, progress=False, ray_address="local")
    assert len(result["points"]) == 2
    records = [json.loads(x) for x in (out / "points.jsonl").read_text().splitlines()]
    assert {r["label"] for r in records} == {
        "task_arithmetic(alpha=0.5)",
        "task_arithmetic(alpha=1)",
    }
    assert all(r["vs_reference"]["n"] == 2 and r["model_dir"] is None for r in records)
    # the same folder resumes without Ray and finds nothing to do
    again = run_sweep(spec, out, progress=False)
    assert {r["id"] for r in again["points"]} == {r["id"] for r in records}


def test_sweep_over_the_lab_pair(tmp_path):
    """A few points over the bundled lab pair on the lab benchmark: merges that really differ
    in accuracy and length, so the front and the selection are not trivial."""
    from l2smerge.lab.bench import bundled_pair, write_benchmark

    try:
        pair = bundled_pair()
    except L2SError as exc:
        pytest.skip(str(exc))
    data_dir = tmp_path / "benchmarks"
    write_benchmark(data_dir, per_level=2)
    spec = {
        "base": str(pair["system1"]),
        "models": [str(pair["system1"]), str(pair["system2"])],
        "merge": {"dtype": "float32"},
        "grid": [{"method": "task_arithmetic", "alpha": [0.3, 0.7]}],
        "points": [{"preset": "ties@7b"}],
        "eval": {"benches": ["lab"], "data_dir": str(data_dir), "max_tokens": 160},
        "reference": {"model": str(pair["system2"]), "label": "system2"},
        "report": False,
    }
    result = run_sweep(spec, tmp_path / "sweep", progress=False)
    records = result["points"]
    assert len(records) == 3
    reference = result["pareto"]["reference"]
    for r in records:
        assert r["vs_reference"]["n"] == r["benchmarks"]["lab"]["n"] > 0
        assert r["vs_reference"]["reference_accuracy"] == pytest.approx(reference["accuracy"])
    front = result["pareto"]["front"]
    assert front
    by_id = {r["id"]: r for r in records}
    chosen = result["selection"]["chosen"]
    if chosen is not None:  # the rule's own definition, checked against the records
        eligible = [by_id[i] for i in result["selection"]["eligible"]]
        assert by_id[chosen]["mean_tokens"] == min(r["mean_tokens"] for r in eligible)
        assert not (
            by_id[chosen]["vs_reference"]["delta"] < 0
            and by_id[chosen]["vs_reference"]["p_value"] < 0.05
        )


def test_a_failing_point_is_named(pair, data_dir, tmp_path):
    spec = _spec(
        pair,
        data_dir,
        grid=[],
        reference=None,
        report=False,
        points=[{"method": "ties", "alpha": 1.0, "density": 1.5}],
    )
    with pytest.raises(L2SError, match=r"sweep point ties\(alpha=1,density=1.5\): .*density"):
        run_sweep(spec, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "points.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "ray_address"),
    [
        (["S.yaml", "-o", "d"], None),
        (["S.yaml", "-o", "d", "--ray"], "local"),
        (["S.yaml", "-o", "d", "--ray", "auto"], "auto"),
        (["--ray", "ray://head:10001", "S.yaml", "-o", "d"], "ray://head:10001"),
    ],
)
def test_cli_ray_option_forms(args, ray_address, tmp_path, monkeypatch):
    """`--ray [ADDRESS]`: only the command-line parsing; run_sweep itself is tested above."""
    from typer.testing import CliRunner

    import l2smerge.choose.sweep as sweep_module
    from l2smerge.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "S.yaml").write_text("{}")
    seen = []
    monkeypatch.setattr(
        sweep_module, "run_sweep", lambda f, out, **kw: seen.append((f, kw["ray_address"]))
    )
    result = CliRunner().invoke(app, ["sweep", *args])
    assert result.exit_code == 0, result.output
    assert seen == [("S.yaml", ray_address)]
