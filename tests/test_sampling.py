"""Sampling (eval/sampling.py): the settings and their errors, avg@n and pass@n against hand
computations (replayed samples with known verdicts), a real tiny model sampled with a fixed
seed (reproducible, resumable, in the run identity), compare on per-item shares, and the
sweep's protocol check before any merge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from l2smerge.choose.compare import compare_runs, write_compare
from l2smerge.choose.stats import paired_difference_interval
from l2smerge.eval import evaluate
from l2smerge.eval.identity import protocol_differences
from l2smerge.eval.metrics import pass_at_k, pass_ks, wilson_interval
from l2smerge.eval.run import planned_protocol
from l2smerge.eval.runs import load_run
from l2smerge.eval.sampling import PRESETS, Sampling, resolve_sampling, sample_seed
from l2smerge.util.errors import L2SError

LAB = [
    {"question": "What is 1+1?", "answer": "2", "level": 1},
    {"question": "What is 12*3?", "answer": "36", "level": 2},
    {"question": "What is 2^10?", "answer": "1024", "level": 2},
]


@pytest.fixture()
def lab_data(tmp_path) -> Path:
    (tmp_path / "data" / "lab").mkdir(parents=True)
    rows = "".join(json.dumps(r) + "\n" for r in LAB)
    (tmp_path / "data" / "lab" / "test.jsonl").write_text(rows)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=3, context=4096)


def sampled_log(path: Path, verdicts: list[list[bool]], tokens: list[list[int]]) -> Path:
    """A replay file: item i's sample s answers right or wrong as verdicts[i][s] says; the
    first sample of every item reflects ("Wait")."""
    rows = []
    for i, (item_verdicts, item_tokens) in enumerate(zip(verdicts, tokens, strict=True)):
        for s, (right, count) in enumerate(zip(item_verdicts, item_tokens, strict=True)):
            answer = LAB[i]["answer"] if right else "7"
            text = ("Wait, so " if s == 0 else "So ") + f"\\boxed{{{answer}}}"
            rows.append({"bench": "lab", "id": i, "sample": s, "response": text, "tokens": count})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def replay(log: Path, out: Path, data: Path) -> dict:
    return evaluate("m", "lab", backend="replay", responses=log, out_dir=out, data_dir=data,
                    progress=False)  # fmt: skip


# -- the settings ---------------------------------------------------------------------------


def test_presets_and_overrides():
    assert resolve_sampling(None) == Sampling() and Sampling().greedy
    r1 = resolve_sampling("r1")
    assert (r1.temperature, r1.top_p, r1.samples) == (0.6, 0.95, 1)
    assert PRESETS["r1"].protocol() == {"temperature": 0.6, "top_p": 0.95}
    assert resolve_sampling("r1", samples=8, seed=3, top_p=0.9) == Sampling(0.6, 0.9, 3, 8)
    assert resolve_sampling({"preset": "r1", "samples": 4}) == Sampling(0.6, 0.95, 0, 4)
    assert resolve_sampling(None, temperature=1.0).protocol() == {"temperature": 1.0, "top_p": 1}
    assert Sampling().protocol() == "greedy" and Sampling().record() == "greedy"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 4}, "--samples 4 with greedy decoding"),
        ({"top_p": 0.9}, "--top-p applies to sampling"),
        ({"temperature": -0.1}, "--temperature must be a number >= 0"),
        ({"temperature": 0.6, "top_p": 0}, r"--top-p must be in \(0, 1\]"),
        ({"temperature": 0.6, "samples": 0}, "--samples must be an integer >= 1"),
        ({"temperature": 0.6, "seed": -1}, "--seed must be an integer >= 0"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(L2SError, match=message):
        resolve_sampling(None, **kwargs)


def test_unknown_preset_and_key():
    with pytest.raises(L2SError, match="--sampling 'r2': choose one of greedy, r1"):
        resolve_sampling("r2")
    with pytest.raises(L2SError, match="sampling: unknown key 'temp'"):
        resolve_sampling({"temp": 0.6})


def test_sample_seeds_are_stable_and_distinct():
    seeds = {sample_seed(0, ("gsm8k", i), s) for i in range(50) for s in range(8)}
    assert len(seeds) == 400
    assert sample_seed(0, ("gsm8k", 3), 1) == sample_seed(0, ("gsm8k", 3), 1)
    assert sample_seed(0, ("gsm8k", 3), 1) != sample_seed(1, ("gsm8k", 3), 1)


# -- pass@k -----------------------------------------------------------------------------------


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact)
    assert pass_ks(1) == [1] and pass_ks(4) == [1, 2, 4] and pass_ks(6) == [1, 2, 4, 6]


# -- avg@n and pass@n on replayed samples ---------------------------------------------------


VERDICTS_A = [[True, True, True, True], [True, False, False, False], [False] * 4]
TOKENS_A = [[10, 20, 30, 40], [5, 5, 5, 5], [100, 100, 100, 100]]


def test_avg_at_n_and_pass_at_n_match_a_hand_computation(tmp_path, lab_data):
    log = sampled_log(tmp_path / "a.jsonl", VERDICTS_A, TOKENS_A)
    summary = replay(log, tmp_path / "a", lab_data)
    lab = summary["benchmarks"]["lab"]
    shares = [1.0, 0.25, 0.0]
    assert lab["n"] == 3 and lab["samples"] == 4  # items are the unit, not samples
    assert lab["accuracy"] == pytest.approx(sum(shares) / 3)
    assert lab["accuracy_ci95"] == pytest.approx(list(wilson_interval(1.25, 3)))
    assert lab["pass_at_k"] == pytest.approx({"1": 1.25 / 3, "2": (1 + 0.5 + 0) / 3, "4": 2 / 3})
    assert lab["mean_tokens"] == pytest.approx(sum(map(sum, TOKENS_A)) / 12)
    assert lab["reflective_ratio"] == pytest.approx(3 / 12)  # one reflective sample per item
    assert summary["average"]["pass_at_k"]["4"] == pytest.approx(2 / 3)
    lines = [json.loads(x) for x in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and sorted({x["sample"] for x in lines}) == [0, 1, 2, 3]
    # per level (the lab bench has levels): level 2 holds items 1 and 2
    assert lab["per_level"]["2"]["accuracy"] == pytest.approx(0.125)


def test_one_sample_gives_the_greedy_interval(tmp_path, lab_data):
    log = sampled_log(tmp_path / "one.jsonl", [[True], [False], [True]], [[3], [4], [5]])
    lab = replay(log, tmp_path / "one", lab_data)["benchmarks"]["lab"]
    assert lab["accuracy"] == pytest.approx(2 / 3)
    assert lab["accuracy_ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert lab["pass_at_k"] == pytest.approx({"1": 2 / 3})


def test_compare_pairs_items_by_their_share_of_correct_samples(tmp_path, lab_data):
    a = replay(sampled_log(tmp_path / "a.jsonl", VERDICTS_A, TOKENS_A), tmp_path / "a", lab_data)
    verdicts_b = [[True, False, True, False], [True, True, False, False], [False] * 3 + [True]]
    b_tokens = [[5] * 4, [5] * 4, [50] * 4]
    replay(sampled_log(tmp_path / "b.jsonl", verdicts_b, b_tokens), tmp_path / "b", lab_data)
    assert a["benchmarks"]["lab"]["samples"] == 4
    result = compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"))
    lab = result["benchmarks"]["lab"]
    # shares A [1, .25, 0], B [.5, .5, .25]: lost = .5, gained = .25 + .25
    assert lab["n"] == 3 and lab["samples_a"] == lab["samples_b"] == 4
    assert lab["delta"] == pytest.approx(0.0, abs=1e-12)
    assert (lab["a_right_b_wrong"], lab["b_right_a_wrong"]) == pytest.approx((0.5, 0.5))
    assert (lab["both_right"], lab["both_wrong"]) == pytest.approx((0.75, 1.25))
    assert lab["delta_ci95"] == pytest.approx(list(paired_difference_interval(0.5, 0.5, 3)))
    assert 0 < lab["p_value"] <= 1
    write_compare(tmp_path / "a", tmp_path / "b", tmp_path / "cmp")
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Sampled runs: an item counts by its share of samples" in markdown
    assert "0.50 / 0.50" in markdown
    wins = [json.loads(x) for x in (tmp_path / "cmp" / "a_right_b_wrong.jsonl").open()]
    assert [w["id"] for w in wins] == [0]
    assert wins[0]["a"]["samples_correct"] == 4 and wins[0]["b"]["samples_correct"] == 2


def test_replayed_samples_must_be_whole(tmp_path, lab_data):
    rows = [{"bench": "lab", "id": 0, "sample": 0, "response": "x"},
            {"bench": "lab", "id": 0, "sample": 2, "response": "x"}]  # fmt: skip
    gap = tmp_path / "gap.jsonl"
    gap.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(L2SError, match=r"gap.jsonl:1: lab id 0 has samples \[0, 2\]"):
        replay(gap, tmp_path / "g", lab_data)
    uneven = sampled_log(tmp_path / "uneven.jsonl", [[True, True], [True]], [[1, 1], [1]])
    with pytest.raises(L2SError, match="lab id 1 has 1 samples, lab id 0 has 2"):
        replay(uneven, tmp_path / "u", lab_data)
    mixed = tmp_path / "mixed.jsonl"
    unnumbered = {"bench": "lab", "id": 1, "response": "x"}
    mixed.write_text(json.dumps(rows[0]) + "\n" + json.dumps(unnumbered) + "\n")
    with pytest.raises(L2SError, match=r"mixed.jsonl:2: some lines of the file have a 'sample'"):
        replay(mixed, tmp_path / "m", lab_data)
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text((json.dumps(rows[0]) + "\n") * 2)
    with pytest.raises(L2SError, match=r"dup.jsonl:2: duplicate response for lab id 0 sample 0"):
        replay(duplicate, tmp_path / "dup", lab_data)
    with pytest.raises(L2SError, match="--backend replay takes the responses as they are"):
        evaluate("m", "lab", backend="replay", responses=gap, out_dir=tmp_path / "r",
                 data_dir=lab_data, progress=False, sampling="r1")  # fmt: skip


def test_a_results_file_mixing_greedy_and_sampled_lines_is_refused(tmp_path, lab_data):
    run = tmp_path / "run"
    run.mkdir()
    base = {"bench": "lab", "correct": True, "tokens": 1}
    (run / "results.jsonl").write_text(
        json.dumps({**base, "id": 0, "sample": 0}) + "\n" + json.dumps({**base, "id": 1}) + "\n"
    )
    with pytest.raises(L2SError, match=r"results.jsonl:2: lines with and without `sample`"):
        load_run(run)


# -- a real tiny model ------------------------------------------------------------------------


def lines_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


def sample_run(tiny: Path, out: Path, data: Path, **sampling) -> dict:
    settings = {"temperature": 1.0, "samples": 3, "seed": 7, **sampling}
    return evaluate(tiny, "lab", out_dir=out, data_dir=data, max_tokens=5, batch_size=4,
                    device="cpu", progress=False, sampling=settings)  # fmt: skip


def by_sample(run: Path) -> dict[tuple[int, int], str]:
    return {(x["id"], x["sample"]): x["response"] for x in lines_of(run)}


def test_a_fixed_seed_reproduces_the_samples(tiny, tmp_path, lab_data):
    sample_run(tiny, tmp_path / "a", lab_data)
    sample_run(tiny, tmp_path / "b", lab_data)
    sample_run(tiny, tmp_path / "c", lab_data, seed=8)
    a, b, c = (by_sample(tmp_path / x) for x in "abc")
    assert sorted(a) == [(i, s) for i in range(3) for s in range(3)]
    assert a == b  # same seed, same responses
    assert a != c  # another seed draws other ones
    assert len({a[(0, s)] for s in range(3)}) == 3  # an item's samples differ
    identity = json.loads((tmp_path / "a" / "run.json").read_text())["identity"]
    assert identity["sampling"] == {"temperature": 1.0, "top_p": 1.0} and identity["seed"] == 7
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["sampling"] == {"temperature": 1.0, "top_p": 1.0, "seed": 7, "samples": 3}
    assert summary["benchmarks"]["lab"]["samples"] == 3


def test_greedy_lines_have_no_sample_and_more_samples_resume(tiny, tmp_path, lab_data):
    evaluate(tiny, "lab", out_dir=tmp_path / "g", data_dir=lab_data, max_tokens=3,
             device="cpu", progress=False)  # fmt: skip
    assert all("sample" not in x for x in lines_of(tmp_path / "g"))
    info_path = tmp_path / "g" / "run.json"
    info = json.loads(info_path.read_text())
    assert info["identity"]["sampling"] == "greedy" and info["identity"]["seed"] is None
    # a run.json from before decoding was recorded is greedy: it resumes, and compares clean
    del info["identity"]["sampling"], info["identity"]["seed"]
    info_path.write_text(json.dumps(info))
    evaluate(tiny, "lab", out_dir=tmp_path / "g", data_dir=lab_data, max_tokens=3,
             device="cpu", progress=False)  # fmt: skip
    assert load_run(tmp_path / "g").protocol["sampling"] == "greedy"
    run = tmp_path / "s"
    sample_run(tiny, run, lab_data, samples=2, seed=1)
    first = by_sample(run)
    summary = sample_run(tiny, run, lab_data, samples=4, seed=1)  # two more per item
    after = by_sample(run)
    assert len(lines_of(run)) == 12 and {k: after[k] for k in first} == first
    assert summary["benchmarks"]["lab"]["samples"] == 4
    assert sample_run(tiny, run, lab_data, samples=2, seed=1)["benchmarks"]["lab"]["samples"] == 2
    with pytest.raises(L2SError, match=r"another model or protocol \(seed: 1 \(there\); 2"):
        sample_run(tiny, run, lab_data, samples=2, seed=2)
    with pytest.raises(L2SError, match=r"sampling: temperature 1, top-p 1 \(there\)"):
        sample_run(tiny, run, lab_data, samples=2, seed=1, temperature=0.5)


def test_protocol_names_sampling_and_plans_it(tiny, tmp_path, lab_data):
    evaluate(tiny, "lab", out_dir=tmp_path / "g", data_dir=lab_data, max_tokens=5,
             device="cpu", progress=False)  # fmt: skip
    sample_run(tiny, tmp_path / "s", lab_data)
    greedy, sampled = load_run(tmp_path / "g"), load_run(tmp_path / "s")
    assert protocol_differences(greedy, sampled) == [
        "sampling: greedy (g); temperature 1, top-p 1 (s)"
    ]
    plan = planned_protocol("lab", max_tokens=5, tokenizer=tiny,
                            sampling={"temperature": 1.0, "samples": 3, "seed": 7})  # fmt: skip
    identity = json.loads((tmp_path / "s" / "run.json").read_text())["identity"]
    assert plan == {k: v for k, v in identity.items() if k != "model"}
    # chat without the tokenizer: its template bytes are unknown, never a false difference
    assert planned_protocol("lab", max_tokens=5)["prompt_sha256"] is None


def test_cli_sampling(tiny, tmp_path, lab_data):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [sys.executable, "-m", "l2smerge", "eval", str(tiny), "--bench", "lab",
               "--data-dir", str(lab_data), "--max-tokens", "3", "--device", "cpu",
               "--no-progress", "--sampling", "r1", "--samples", "2",
               "-o", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "temperature 0.6, top-p 0.95, 2 samples per item, seed 0" in proc.stdout
    assert "avg@2%" in proc.stdout and "pass@2%" in proc.stdout
    from typer.testing import CliRunner

    from l2smerge.cli import app

    result = CliRunner().invoke(app, [*command[3:-2], "--top-p", "2", "-o", str(tmp_path / "x")])
    assert isinstance(result.exception, L2SError)
    assert "--top-p must be in (0, 1]" in str(result.exception)
    assert not (tmp_path / "x").exists()


# -- sweep ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("pair")
    base = make_tiny_model(folder / "system1", seed=0, hidden=16, layers=1, context=4096)
    return base, make_tiny_model(folder / "system2", base=base, seed=1, noise=0.05)


def sweep_spec(pair: tuple[Path, Path], data: Path, reference: dict, **eval_settings) -> dict:
    base, system2 = pair
    return {
        "base": str(base),
        "models": [str(base), str(system2)],
        "merge": {"dtype": "float32"},
        "points": [{"method": "task_arithmetic", "alpha": 0.5}],
        "eval": {
            "benches": ["lab"],
            "max_tokens": 3,
            "data_dir": str(data),
            "device": "cpu",
            "limit": 2,
            **eval_settings,
        },  # fmt: skip
        "reference": reference,
        "report": False,
    }


def test_sweep_refuses_a_reference_of_another_decoding_before_merging(pair, tmp_path, lab_data):
    from l2smerge.choose.sweep import run_sweep

    greedy = tmp_path / "greedy"
    evaluate(pair[1], "lab", out_dir=greedy, max_tokens=3, limit=2, data_dir=lab_data,
             device="cpu", progress=False)  # fmt: skip
    spec = sweep_spec(pair, lab_data, {"run": str(greedy)}, sampling="r1")
    expected = (
        r"reference greedy: the run .* was evaluated differently from the sweep's points "
        r"\(sampling: greedy \(greedy\); temperature 0.6, top-p 0.95 \(the sweep's points\)\); "
        r"nothing was merged"
    )
    with pytest.raises(L2SError, match=expected):
        run_sweep(spec, tmp_path / "sweep", progress=False)
    assert not (tmp_path / "sweep").exists()
    # a reference model with its own prompt would be evaluated differently: refused before
    # it is evaluated
    source = {"model": str(pair[1]), "label": "system2", "prompt": "qwen25-math-cot"}
    expected = (
        r"the reference model .* would be evaluated differently from the sweep's points "
        r"\(prompt: qwen25-math-cot \(system2\); chat"
    )
    with pytest.raises(L2SError, match=expected):
        run_sweep(sweep_spec(pair, lab_data, source), tmp_path / "sweep2", progress=False)
    assert not (tmp_path / "sweep2").exists()


def test_a_sampled_sweep_selects_on_per_item_shares(pair, tmp_path, lab_data):
    from l2smerge.choose.sweep import run_sweep

    sampling = {"temperature": 1.0, "samples": 2, "seed": 3}
    reference = {"model": str(pair[1]), "label": "system2"}
    result = run_sweep(sweep_spec(pair, lab_data, reference, sampling=sampling),
                       tmp_path / "sweep", progress=False)  # fmt: skip
    [point] = result["points"]
    run = load_run(point["run_dir"])
    assert all(r["samples"] == 2 for r in run.records.values())
    assert len(lines_of(Path(point["run_dir"]))) == 4  # 2 items x 2 samples
    shares = [r["correct"] for r in run.records.values()]
    assert point["accuracy"] == pytest.approx(sum(shares) / len(shares))
    assert point["vs_reference"]["n"] == 2
    identity = json.loads((tmp_path / "sweep" / "reference" / "system2" / "run.json").read_text())
    assert identity["identity"]["sampling"] == {"temperature": 1.0, "top_p": 1.0}
