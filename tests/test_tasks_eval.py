"""`l2smerge eval --task`: the FAQ example end to end (replayed logs, lexical judge, compare),
resume and re-judging, the llm judge inside a run, and the bundled lab pair on lab-steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import JudgeServer

from l2smerge.eval import evaluate
from l2smerge.util.errors import L2SError

REPO = Path(__file__).resolve().parents[1]
FAQ = REPO / "docs" / "examples" / "faq"
DROPPED_BY_V2 = {
    "return-window": ["original packaging"],
    "warranty": ["proof of purchase"],
    "ship-abroad": ["customs"],
    "reset-password": ["spam folder"],
    "cancel-plan": ["no refund for the current month"],
}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def replay(version: str, out: Path, **options) -> dict:
    return evaluate(
        f"assistant-{version}",
        None,
        tasks=[FAQ / "faq.jsonl"],
        backend="replay",
        responses=FAQ / f"logs-{version}.jsonl",
        out_dir=out,
        progress=False,
        **options,
    )


def test_faq_replay_lexical_figures(tmp_path):
    summary = replay("v2", tmp_path / "v2")
    faq = summary["benchmarks"]["faq"]
    assert faq["n"] == 8 and faq["judge_errors"] == 0
    assert (faq["key_points"], faq["covered_points"]) == (31, 26)
    assert faq["mean_coverage"] == pytest.approx((5 * 0.75 + 3 * 1.0) / 8)
    assert faq["full_coverage_ratio"] == faq["accuracy"] == 3 / 8
    assert faq["mean_tokens"] == pytest.approx(159 / 8)
    assert list(faq["per_group"]) == ["returns", "shipping", "account"]
    assert summary["coverage_average"]["mean_coverage"] == faq["mean_coverage"]
    assert summary["judge"] == {"judge": "lexical", "requests": 0, "prompt_tokens": 0,
                                "completion_tokens": 0}  # fmt: skip
    records = {r["id"]: r for r in lines(tmp_path / "v2" / "results.jsonl")}
    assert set(records) == {json.loads(x)["id"] for x in (FAQ / "faq.jsonl").open()}
    for item_id, dropped in DROPPED_BY_V2.items():
        r = records[item_id]
        assert [p for p in r["key_points"] if p not in r["covered_points"]] == dropped
        assert r["correct"] is False and r["coverage"] == 0.75
    assert records["return-label"]["verdicts"][2] == {
        "point": "print the label", "status": "covered", "evidence": "print the label"
    }  # fmt: skip
    run_info = json.loads((tmp_path / "v2" / "run.json").read_text())
    assert run_info["identity"]["judge"] == {"judge": "lexical"}


def test_cli_eval_compare_names_every_dropped_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for version in ("v1", "v2"):
        proc = subprocess.run(
            [sys.executable, "-m", "l2smerge", "eval", f"assistant-{version}",
             "--task", str(FAQ / "faq.jsonl"), "--judge", "lexical", "--backend", "replay",
             "--responses", str(FAQ / f"logs-{version}.jsonl"), "--no-progress",
             "-o", str(tmp_path / version)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "key-point coverage" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "l2smerge", "compare", str(tmp_path / "v1"), str(tmp_path / "v2"),
         "-o", str(tmp_path / "cmp")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    coverage = result["coverage"]
    assert coverage["same_judge"] is True
    assert {c["id"]: c["dropped"] for c in coverage["items"]} == DROPPED_BY_V2
    assert coverage["tasks"]["faq"]["points_dropped"] == 5
    assert coverage["tasks"]["faq"]["delta"] == pytest.approx(-5 * 0.25 / 8)
    lo, hi = coverage["tasks"]["faq"]["delta_ci95"]
    assert lo < coverage["tasks"]["faq"]["delta"] < hi
    assert {r["point"] for r in coverage["dropped_ranking"]} == {
        p for ps in DROPPED_BY_V2.values() for p in ps
    }
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    for item_id, (point,) in DROPPED_BY_V2.items():
        assert f"- faq `{item_id}`: coverage 100.0 → 75.0; dropped: “{point}”" in markdown


def test_a_judge_change_is_warned_about_once(tmp_path):
    from l2smerge.choose.compare import write_compare

    replay("v1", tmp_path / "v1")
    replay("v2", tmp_path / "v2")
    info_path = tmp_path / "v2" / "run.json"
    info = json.loads(info_path.read_text())
    info["identity"]["judge"] = {"judge": "llm", "judge_model": "m", "judge_prompt": "abc"}
    info_path.write_text(json.dumps(info))
    result = write_compare(tmp_path / "v1", tmp_path / "v2", tmp_path / "cmp")
    [line] = result["protocol_differences"]
    assert line.startswith("judge: ") and '"llm"' in line
    assert result["coverage"]["judge_differences"] == [line]
    assert result["coverage"]["same_judge"] is False
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert markdown.count("judge: ") == 1 and markdown.count("Warning") == 1
    assert "The runs were judged differently (the warning on top names the judges)" in markdown


def test_resume_and_errors(tmp_path):
    first = replay("v1", tmp_path / "run")
    again = replay("v1", tmp_path / "run")
    assert again["benchmarks"]["faq"] == first["benchmarks"]["faq"]
    assert len(lines(tmp_path / "run" / "results.jsonl")) == 8
    with pytest.raises(L2SError, match="another model or protocol \\(judge: "):
        replay("v1", tmp_path / "run", judge="llm", judge_options={"url": "http://x/v1",
                                                                   "model": "m"})  # fmt: skip
    with pytest.raises(L2SError, match="has responses for 'faq', which is neither a benchmark"):
        evaluate("m", None, backend="replay", responses=FAQ / "logs-v1.jsonl",
                 out_dir=tmp_path / "x", progress=False)  # fmt: skip
    typo = tmp_path / "typo.jsonl"
    typo.write_text('{"task": "faq", "id": "warranty-typo", "response": "x"}\n')
    with pytest.raises(L2SError, match=r"typo.jsonl:1: task 'faq' has no item with id"):
        evaluate("m", None, tasks=[FAQ / "faq.jsonl"], backend="replay", responses=typo,
                 out_dir=tmp_path / "t", progress=False)  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "q?"}\n')
    with pytest.raises(L2SError, match=r"bad.jsonl:1: missing \"key_points\""):
        evaluate("m", None, tasks=[bad], out_dir=tmp_path / "y", progress=False)
    with pytest.raises(L2SError, match="pass --bench gsm8k,math500,... or --task FILE"):
        evaluate("m", None, out_dir=tmp_path / "z", progress=False)


def test_llm_judge_in_a_run_rejudges_errors_and_then_costs_nothing(tmp_path):
    options = {"model": "judge", "backoff": 0.0, "concurrency": 2, "cache_dir": tmp_path / "c",
               "malformed_retries": 0}  # fmt: skip
    # the judge answers garbage to the first 3 requests: 3 items get judge errors
    with JudgeServer(outputs=["no idea"] * 3) as server:
        summary = replay("v2", tmp_path / "run", judge="llm",
                         judge_options={**options, "url": server.url})  # fmt: skip
        assert server.requests == 8
    faq = summary["benchmarks"]["faq"]
    assert faq["judge_errors"] == 3 and faq["judged"] == 5
    errors = [r for r in lines(tmp_path / "run" / "results.jsonl") if r["judge_error"]]
    assert len(errors) == 3 and all(r["coverage"] is None for r in errors)
    assert all(r["correct"] is False for r in errors)  # never a pass
    assert summary["judge"]["judge_model"] == "judge" and summary["judge"]["requests"] == 8

    with JudgeServer() as server:  # resume: only the 3 errors are judged again
        summary = replay("v2", tmp_path / "run", judge="llm",
                         judge_options={**options, "url": server.url})  # fmt: skip
        assert server.requests == 3
    assert summary["benchmarks"]["faq"]["judge_errors"] == 0
    # the honest test judge quotes each point's own text, so only literal mentions count
    assert summary["benchmarks"]["faq"]["n"] == 8

    with JudgeServer() as server:  # the same responses in a new run directory: all cached
        again = replay("v2", tmp_path / "other", judge="llm",
                       judge_options={**options, "url": server.url})  # fmt: skip
        assert server.requests == 0
    assert (
        again["benchmarks"]["faq"]["mean_coverage"]
        == (summary["benchmarks"]["faq"]["mean_coverage"])
    )


def test_judge_down_keeps_responses_and_resume_judges_them(tmp_path):
    dead = JudgeServer()
    dead.close()  # nothing listens there any more
    options = {"model": "judge", "backoff": 0.0, "retries": 0, "cache_dir": tmp_path / "c"}
    with pytest.raises(L2SError, match="failed after 0 retries"):
        replay("v1", tmp_path / "run", judge="llm", judge_options={**options, "url": dead.url})
    written = lines(tmp_path / "run" / "results.jsonl")
    assert len(written) == 8 and all(r["judge_error"] for r in written)
    with JudgeServer() as server:
        summary = replay("v1", tmp_path / "run", judge="llm",
                         judge_options={**options, "url": server.url})  # fmt: skip
        assert server.requests == 8
    assert summary["benchmarks"]["faq"]["judge_errors"] == 0


@pytest.mark.slow
def test_bundled_lab_pair_on_lab_steps(tmp_path):
    from l2smerge.lab.bench import bundled_pair
    from l2smerge.lab.freeform import write_task

    task = write_task(tmp_path, per_level=1)
    pair = bundled_pair()
    runs = {}
    for name in ("system1", "system2"):
        shutil.copytree(pair[name], tmp_path / name)
        runs[name] = evaluate(tmp_path / name, None, tasks=[task], out_dir=tmp_path / f"run-{name}",
                              max_tokens=128, device="cpu", progress=False)  # fmt: skip
    steps2 = runs["system2"]["benchmarks"]["lab-steps"]
    steps1 = runs["system1"]["benchmarks"]["lab-steps"]
    assert steps2["n"] == 5 and steps2["mean_coverage"] == 1.0  # every hop written out
    # System 1 answers at once: at most the conclusion of each chain, never the hops
    assert steps1["mean_coverage"] < 0.5 and steps1["mean_tokens"] < steps2["mean_tokens"]
    assert set(steps2["per_group"]) == {f"level-{n}" for n in range(1, 6)}
