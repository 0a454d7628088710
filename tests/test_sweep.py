import json
import os
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
    base = make_tiny_model(root / "system1", seed=0, hidden=16, layers=1, context=4096)
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
    assert selection["rule"] == "shortest_noninferior"
    # two items cannot show any point within 2 points of the reference: nothing is chosen,
    # and the rule says why and how many items it would take
    assert selection["chosen"] is None and selection["eligible"] == []
    assert (
        "no merge is shown within 2.0 points on 2 items; evaluate more items"
        in (selection["lines"][-1])
    )
    assert selection["items_needed_per_benchmark"] == 189
    assert not (out / "chosen").exists()
    assert (out / "reference" / "system2" / "results.jsonl").exists()
    assert (out / "report" / "report.html").exists()
    system1 = json.loads((out / "baselines" / "system1" / "run.json").read_text())
    assert system1["identity"]["prompt"] == "fewshot"
    assert system1["identity"]["max_tokens"] == 4
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["label"] for r in report["runs"]][:2] == ["system1", "system2"]
    assert report["reference"] == "system2"
    assert result["selection"]["chosen"] == selection["chosen"]

    # A wide margin (selection may change between runs) lets the shortest point in; its
    # checkpoint is kept in chosen/ although keep_models is false, and loads in transformers.
    calls.clear()
    wide = run_sweep(_spec(pair, data_dir), out, progress=False, margin=99)
    assert calls == []  # a finished sweep merges and evaluates nothing again ...
    shortest = min(records, key=lambda r: (r["mean_tokens"], -r["accuracy"]))
    assert wide["selection"]["chosen"] == shortest["id"]
    chosen = out / "chosen"
    assert wide["chosen"] == str(chosen)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(chosen).config.hidden_size == 16
    card = (chosen / "README.md").read_text()
    assert "## Evaluation" in card and shortest["label"] in card and "```python" in card
    assert "https://arxiv.org/abs/" in card  # the method's paper
    assert yaml.safe_load((chosen / "merge.yaml").read_text())["method"] == shortest["method"]
    assert json.loads((chosen / "sweep_point.json").read_text())["id"] == shortest["id"]
    assert not any((out / "points" / r["id"] / "model").exists() for r in records)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["chosen"] == shortest["label"]
    html_page = (out / "report" / "report.html").read_text()
    assert "```" not in html_page and "<pre><code>" in html_page  # the rule, not raw markdown

    # the chosen checkpoint is the evaluated one: same bytes as a fresh merge of the recipe
    again = run_sweep(_spec(pair, data_dir), out, progress=False, margin=99)
    assert calls == [] and again["selection"]["chosen"] == shortest["id"]
    # back to the default margin: nothing chosen, so chosen/ goes
    run_sweep(_spec(pair, data_dir), out, progress=False)
    assert calls == [] and not chosen.exists()

    # dropping a point from the file: it stays recorded but leaves the front and selection
    fewer = run_sweep(_spec(pair, data_dir, points=[]), out, progress=False)
    assert calls == [] and len(fewer["points"]) == 2
    assert len((out / "points.jsonl").read_text().splitlines()) == 3
    # other evaluation settings are refused instead of mixed into one front
    changed = _spec(pair, data_dir)
    changed["eval"]["limit"] = 3
    with pytest.raises(L2SError, match=r"holds results of a sweep with eval.limit = 2, not 3;"):
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


def _point(pid, tokens, lost, gained, n, *, benches=None):
    """A points.jsonl record against a reference that is right on `n - lost` of n items
    (one benchmark unless `benches` gives {bench: (lost, gained, n)})."""
    from l2smerge.choose.stats import paired_difference_interval
    from l2smerge.eval.metrics import macro_interval

    benches = benches or {"gsm8k": (lost, gained, n)}
    per = {}
    for bench, (lo_, ga, nn) in benches.items():
        per[bench] = {
            "n": nn,
            "delta": (ga - lo_) / nn,
            "delta_ci95": list(paired_difference_interval(ga, lo_, nn)),
        }
    deltas = [b["delta"] for b in per.values()]
    ci = macro_interval(deltas, [b["delta_ci95"] for b in per.values()])
    reference_accuracy = 0.9
    delta = sum(deltas) / len(deltas)
    return {
        "id": pid,
        "label": pid,
        "accuracy": reference_accuracy + delta,
        "mean_tokens": tokens,
        "vs_reference": {
            "n": sum(b["n"] for b in per.values()),
            "delta": delta,
            "delta_ci95": list(ci),
            "p_value": 1.0,
            "tokens_ratio": tokens / 1000,
            "reference_accuracy": reference_accuracy,
            "point_accuracy": reference_accuracy + delta,
            "benchmarks": per,
        },
    }


def test_non_inferiority_rejects_the_issues_small_samples():
    # issue 17: --limit 5 chose ties@7b at 20% against the reference's 100% (-80 points)
    five = choose([_point("ties@7b", 100, lost=4, gained=0, n=5)], has_reference=True)
    assert five["chosen"] is None and five["rejected"] == ["ties@7b"]
    assert "lower bound -96.4 <= −2.0" in five["lines"][1]
    assert five["lines"][-1].startswith(
        "chosen: none; no merge is shown within 2.0 points on 5 items; evaluate more items"
    )
    # n = 2, average@7b at -50 points
    two = choose([_point("average@7b", 100, lost=1, gained=0, n=2)], has_reference=True)
    assert two["chosen"] is None and "on 2 items" in two["lines"][-1]
    # even a perfect tie is not shown within 2 points on 10 items (the interval says so)
    tie = choose([_point("tie", 100, lost=0, gained=0, n=10)], has_reference=True)
    assert tie["chosen"] is None and tie["tie_lower_bound"] == pytest.approx(-0.2775, abs=1e-4)
    # ... but it is on 200
    assert choose([_point("tie", 100, 0, 0, 200)], has_reference=True)["chosen"] == "tie"


def test_non_inferiority_picks_the_shortest_eligible_point():
    pts = [
        _point("short-but-worse", 300, lost=30, gained=5, n=500),  # -5 points
        _point("short-ok", 450, lost=6, gained=10, n=500),  # +0.8, shown within 2
        _point("long-better", 700, lost=2, gained=20, n=500),
    ]
    sel = choose(pts, has_reference=True)
    assert sel["chosen"] == "short-ok"
    assert sel["rejected"] == ["short-but-worse"] and set(sel["eligible"]) == {
        "short-ok",
        "long-better",
    }
    assert (
        "rule: shortest_noninferior:" in sel["lines"][0] and "above −2.0 points" in sel["lines"][0]
    )
    assert sel["lines"][-1].startswith("chosen: short-ok: accuracy 90.8% against 90.0%")
    assert "-55.0% length" in sel["lines"][-1]
    assert sel["margin"] == 2.0
    # a wider margin admits the shorter point; a narrower one nobody
    assert choose(pts, has_reference=True, margin=10)["chosen"] == "short-but-worse"
    narrow = choose(pts[:2], has_reference=True, margin=0.8)
    assert narrow["chosen"] is None and "closest" in narrow["lines"][-1]
    assert choose(pts, rule="most_accurate", has_reference=True)["chosen"] == "long-better"
    with pytest.raises(L2SError, match="needs a reference"):
        choose(pts, rule="shortest_noninferior", has_reference=False)


def test_benchmark_guard_rejects_a_collapse_hidden_by_the_macro_average():
    hidden = _point(
        "hides-a-drop",
        100,
        0,
        0,
        0,
        benches={"gsm8k": (0, 80, 1000), "math500": (0, 80, 1000), "aime24": (120, 0, 1000)},
    )
    fine = _point("fine", 200, 0, 0, 0, benches={b: (1, 1, 1000) for b in ("gsm8k", "aime24")})
    assert hidden["vs_reference"]["delta"] > 0  # the macro average gains
    assert choose([hidden, fine], has_reference=True)["chosen"] == "hides-a-drop"
    guarded = choose([hidden, fine], has_reference=True, benchmark_margin=10)
    assert guarded["chosen"] == "fine"
    assert "aime24 drops 12.0 > 10.0 pts" in guarded["lines"][1]


def test_selection_settings_in_the_sweep_file(tmp_path):
    spec = {
        "models": ["a"],
        "points": [{"method": "average"}],
        "eval": {"benches": ["gsm8k"]},
        "reference": {"run": "r"},
    }
    parsed = parse_sweep({**spec, "selection": {"margin": 5, "benchmark_margin": 10}}, tmp_path)
    assert parsed.selection.margin == 5 and parsed.selection.benchmark_margin == 10
    with pytest.raises(L2SError, match="selection: alpha: the rule no longer uses a p-value"):
        parse_sweep({**spec, "selection": {"alpha": 0.05}}, tmp_path)
    with pytest.raises(L2SError, match="shortest_not_worse was replaced by shortest_noninferior"):
        parse_sweep({**spec, "selection": {"rule": "shortest_not_worse"}}, tmp_path)
    with pytest.raises(L2SError, match="selection.margin"):
        parse_sweep({**spec, "selection": {"margin": 0}}, tmp_path)


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
    # 1 preset + 1 listed + 4 grid: ties@7b, the listed point and the grid's ties alpha 1.0
    # density 0.2 are one merge, run once under its first spelling
    assert len(points) == 4
    assert [p.label for p in points][0] == "ties@7b"
    assert parsed.models[0] == (tmp_path / "a").resolve()
    assert parsed.eval.benches == ["gsm8k", "math500"]
    assert len({p.id for p in points}) == 4
    # alpha: 1 and alpha: 1.0 are one point too
    ints = [{"method": "ties", "alpha": 1, "density": 0.2}]
    one = parse_sweep({**spec, "grid": [], "points": ints}, tmp_path)
    assert expand_points(one)[0].id == points[0].id

    def bad(change: dict, match: str):
        with pytest.raises(L2SError, match=match):
            parse_sweep({**spec, **change}, tmp_path / "SWEEP.yaml")

    bad({"evall": {}}, r"SWEEP.yaml: evall: unknown key")
    bad({"eval": {"benches": ["gsm8k"], "limt": 3}}, r"eval.limt: unknown key")
    bad({"eval": {"benches": ["gsm8k"], "limit": 0}}, r"eval.limit")
    bad({"grid": {"method": ["ties"], "gamma": [1]}}, r"grid\[0\].gamma: ties has no parameter")
    bad({"grid": {"method": ["nope"]}}, r"grid\[0\].method: unknown method 'nope'")
    bad({"points": [{"alpha": 1}]}, r"points\[0\].method: required")
    bad({"points": [{"preset": "ties@99b"}]}, r"points\[0\].preset: unknown preset")
    bad({"points": [{"method": "ties", "alpha": [0.5, 1]}]}, r"points\[0\].alpha: a list")
    bad({"grid": [], "points": []}, r"no merge to try")
    bad({"reference": {"label": "x"}}, r"reference: give exactly one")
    bad({"selection": {"rule": "best"}}, r"selection.rule")
    bad({"merge": {"dtyp": "float32"}}, r"merge.dtyp: unknown key \(known: .*dtype")
    bad({"merge": {"method": "ties"}}, r"merge.method: set it per point")
    bad(
        {"selection": {"rule": "shortest_noninferior"}}, r"selection.rule: shortest_noninferior nee"
    )


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
    # A point that fails in a worker fails as it does here, whether the grid or the search
    # hands it over (one runner): one error naming the point, without the remote traceback.
    from rich.console import Console

    from l2smerge.choose.sweep_point import merge_and_evaluate
    from l2smerge.choose.sweep_runner import LocalRunner, RayRunner
    from l2smerge.choose.sweep_spec import Point, parse_sweep

    broken = parse_sweep({**spec, "models": [str(tmp_path / "gone")]}, tmp_path / "x.yaml")
    data = broken.model_dump(mode="json")
    point = Point("task_arithmetic", {"alpha": 0.5})
    quiet = Console(quiet=True)
    errors = []
    for runner in (
        LocalRunner(merge_and_evaluate, data, tmp_path / "local", False),
        RayRunner(
            merge_and_evaluate, data, tmp_path, address="local", log_to_driver=False, console=quiet
        ),  # fmt: skip
    ):
        with pytest.raises(L2SError, match=r"^sweep point task_arithmetic\(alpha=0.5\): ") as e:
            list(runner.run([point]))
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "gone" in errors[0]
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
    for r in records:  # the rule's own definition, checked against the records
        eligible = r["id"] in result["selection"]["eligible"]
        assert eligible == (r["vs_reference"]["delta_ci95"][0] > -0.02)
    if chosen is not None:
        eligible = [by_id[i] for i in result["selection"]["eligible"]]
        assert by_id[chosen]["mean_tokens"] == min(r["mean_tokens"] for r in eligible)


def test_a_failing_point_is_named(pair, data_dir, tmp_path):
    spec = _spec(
        pair,
        data_dir,
        grid=[],
        reference=None,
        report=False,
        # twin's rank >= 1 is the method's own check, made at its first tensor
        points=[{"method": "twin", "rank": 0}],
    )
    with pytest.raises(L2SError, match=r"sweep point twin\(rank=0\): .*rank"):
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


def test_a_sweep_that_failed_before_any_result_locks_nothing(pair, data_dir, tmp_path):
    out = tmp_path / "s"
    missing = {"model": str(tmp_path / "no-such-model"), "label": "system2"}
    with pytest.raises(L2SError):
        run_sweep(_spec(pair, data_dir, reference=missing), out, progress=False)
    assert (out / "sweep.json").exists()
    # the corrected rerun, with other evaluation settings too, runs in the same folder
    fixed = _spec(pair, data_dir, grid=[], report=False)
    fixed["eval"]["limit"] = 1
    result = run_sweep(fixed, out, progress=False)
    assert len(result["points"]) == 1 and result["points"][0]["vs_reference"]["n"] == 1
    assert json.loads((out / "sweep.json").read_text())["eval"]["limit"] == 1


def test_export_writes_any_point_with_a_portable_recipe(pair, data_dir, tmp_path, monkeypatch):
    """A sweep file with relative model paths: the exported recipe keeps them relative (to its
    own folder) and reruns to the same bytes; a point is named by label or id prefix."""
    from typer.testing import CliRunner

    from l2smerge.cli import app

    monkeypatch.chdir(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    rel = {k: os.path.relpath(v, project) for k, v in pair.items()}
    spec = _spec(pair, data_dir, points=[], report=False)
    spec.update(base=rel["system1"], models=[rel["system1"], rel["system2"]])
    (project / "SWEEP.yaml").write_text(yaml.safe_dump(spec))
    result = run_sweep(project / "SWEEP.yaml", "sweep", progress=False)
    assert result["selection"]["chosen"] is None  # 2 items: nothing shown non-inferior
    record = next(r for r in result["points"] if r["label"] == "task_arithmetic(alpha=0.5)")

    out = CliRunner().invoke(app, ["export", "sweep", "task_arithmetic(alpha=0.5)", "-o", "ta"])
    assert out.exit_code == 0, out.output
    recipe = yaml.safe_load((tmp_path / "ta" / "merge.yaml").read_text())
    assert recipe["base"] == os.path.relpath(pair["system1"], tmp_path / "ta")
    assert not os.path.isabs(recipe["models"][1])
    card = (tmp_path / "ta" / "README.md").read_text()
    assert "task_arithmetic(alpha=0.5)" in card and "Editing Models with Task Arithmetic" in card
    assert 'from_pretrained("ta"' in card  # the usage snippet names the folder as given

    from l2smerge.merge.config import MergeConfig
    from l2smerge.merge.executor import run_merge

    rerun = run_merge(MergeConfig.from_yaml(tmp_path / "ta" / "merge.yaml"), tmp_path / "again")
    assert (rerun / "model.safetensors").read_bytes() == (
        tmp_path / "ta" / "model.safetensors"
    ).read_bytes()

    def fails(args: list[str], message: str) -> None:
        result = CliRunner().invoke(app, ["export", *args])
        assert isinstance(result.exception, L2SError) and message in str(result.exception)

    fails(["sweep", record["id"][:-3], "-o", "ta"], "ta: already exists")  # an id prefix
    fails(["sweep", "-o", "x"], "the sweep chose no point")
    fails(["sweep", "nope", "-o", "x"], "no point 'nope'")
    fails(["project", "-o", "x"], "not a sweep folder")
    assert not (tmp_path / "x").exists()
    forced = CliRunner().invoke(app, ["export", "sweep", record["id"][:-3], "-o", "ta", "--force"])
    assert forced.exit_code == 0, forced.output


def test_export_refuses_inputs_changed_since_the_evaluation(pair, data_dir, tmp_path):
    import shutil

    from l2smerge.choose.ship import export_point

    models = tmp_path / "models"
    shutil.copytree(pair["system1"], models / "system1")
    shutil.copytree(pair["system2"], models / "system2")
    local = {k: models / k for k in pair}
    spec = _spec(local, data_dir, points=[], report=False, grid=[{"method": "average"}])
    run_sweep(spec, tmp_path / "s", progress=False)
    tiny = make_tiny_model(tmp_path / "changed", base=pair["system1"], seed=5, noise=0.05)
    shutil.rmtree(models / "system2")
    shutil.copytree(tiny, models / "system2")
    with pytest.raises(L2SError, match="model 2 input.* changed since point average"):
        export_point(tmp_path / "s", "average", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_search_progress_counts_each_trial_once(pair, data_dir, tmp_path):
    pytest.importorskip("optuna")
    from rich.console import Console

    search = {"method": "task_arithmetic", "params": {"alpha": [0.2, 1.2]}, "trials": 2, "seed": 3}
    spec = _spec(pair, data_dir, grid=[], points=[], search=search, report=False)
    console = Console(record=True, width=200)
    run_sweep(spec, tmp_path / "s", progress=False, console=console)
    text = console.export_text()
    assert "[1/2]" in text and "[2/2]" in text and "[3/2]" not in text


def test_model_card_names_hub_inputs_and_the_papers(pair, tmp_path):
    """Inputs that are snapshots in the Hugging Face cache are named by hub id and revision
    (and only they become base_model metadata); each method links its paper."""
    import shutil

    from l2smerge.merge.config import MergeConfig
    from l2smerge.merge.executor import run_merge
    from l2smerge.merge.provenance import hub_source

    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-Math-7B" / "snapshots" / "abc123"
    shutil.copytree(pair["system1"], snapshot)
    assert hub_source(snapshot) == {"hub_id": "Qwen/Qwen2.5-Math-7B", "revision": "abc123"}
    assert hub_source(pair["system2"]) is None
    config = MergeConfig.build(
        method="aim",
        on="ties",
        models=[snapshot, pair["system2"]],
        base=snapshot,
        parameters={"omega": 0.4},
        calibration=None,
        dtype="float32",
    )
    calibration = tmp_path / "c.jsonl"
    calibration.write_text(json.dumps({"question": "1+1?", "short_answer": "2"}) + "\n")
    out = run_merge(config.model_copy(update={"calibration": calibration}), tmp_path / "m")
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == ["Qwen/Qwen2.5-Math-7B"]  # the local input is not metadata
    assert "[Qwen/Qwen2.5-Math-7B](https://huggingface.co/Qwen/Qwen2.5-Math-7B)" in card
    assert "https://arxiv.org/abs/2502.02421" in card and "https://arxiv.org/abs/2306.01708" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "```yaml" in card
