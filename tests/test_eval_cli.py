"""`l2smerge eval` as a user meets it: a limit beyond the context capped with one note,
transformers kept quiet under --no-progress and -q, tables whole in files and pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAB = [{"question": "What is 1+1?", "answer": "2", "level": 1}]
EVAL = [sys.executable, "-m", "l2smerge", "eval"]


@pytest.fixture()
def lab_data(tmp_path) -> Path:
    (tmp_path / "data" / "lab").mkdir(parents=True)
    (tmp_path / "data" / "lab" / "test.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in LAB)
    )
    return tmp_path / "data"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=5)  # context 512


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*EVAL, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_limit_beyond_the_context_is_capped_with_one_note(tiny, tmp_path, lab_data):
    out = tmp_path / "run"
    args = [str(tiny), "--bench", "lab", "--data-dir", str(lab_data), "--device", "cpu"]
    done = run([*args, "--max-tokens", "100000", "--no-progress", "-o", str(out)])
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("note: --max-tokens 100000 is beyond the context") == 1
    assert "(512 tokens, prompt included)" in done.stderr
    # transformers said nothing: no loading bar, no length warning
    assert "Loading weights" not in done.stderr and "maximum length" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr  # the note is all there is
    from transformers import AutoTokenizer

    line = json.loads((out / "results.jsonl").read_text())
    template = json.loads((out / "run.json").read_text())["prompt_template"]
    prompt = AutoTokenizer.from_pretrained(tiny).encode(
        template.replace("{question}", LAB[0]["question"]), add_special_tokens=False
    )
    # a random model never stops: it runs to the end of the context, no further
    assert line["tokens"] == 512 - len(prompt) and line["truncated"]


def test_quiet_prints_only_the_paths(tiny, tmp_path, lab_data):
    out = tmp_path / "run"
    args = [str(tiny), "--bench", "lab", "--data-dir", str(lab_data), "--device", "cpu"]
    done = run([*args, "--max-tokens", "100000", "-q", "-o", str(out)])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert (
        done.stdout.strip() == f"results: {out / 'results.jsonl'}  summary: {out / 'summary.json'}"
    )


def test_tables_are_printed_whole_into_a_pipe(tmp_path, lab_data):
    replay = tmp_path / "r.jsonl"
    replay.write_text('{"bench": "lab", "id": 0, "response": "Wait. \\\\boxed{2}", "tokens": 4}\n')
    label = "a-merged-model-with-a-rather-long-name-" * 3
    done = run(
        [
            label,
            "--backend",
            "replay",
            "--responses",
            str(replay),
            "--data-dir",
            str(lab_data),
            "-o",
            str(tmp_path / "run"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert label in done.stdout.splitlines() and "…" not in done.stdout
    assert "evaluating" in done.stderr and "evaluating" not in done.stdout  # progress: stderr
    header = next(x for x in done.stdout.splitlines() if "bench" in x)
    for column in ("acc%", "95% CI", "tokens", "median", "trunc%", "reflect%", "refl/resp"):
        assert column in header
