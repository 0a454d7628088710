import json
import subprocess
import sys

import pytest
from run_fixtures import paired_runs, write_run

from l2smerge.choose.compare import write_compare
from l2smerge.choose.stats import mcnemar_exact
from l2smerge.util.errors import L2SError


def test_known_differences_give_right_deltas_and_intervals(tmp_path):
    a, b = paired_runs(tmp_path, n=200, a_only=10, b_only=30)
    result = write_compare(a, b, tmp_path / "cmp", resamples=1000)
    g = result["benchmarks"]["gsm8k"]
    assert g["n"] == 200
    assert g["accuracy_a"] == pytest.approx(120 / 200)
    assert g["accuracy_b"] == pytest.approx(140 / 200)
    assert g["delta"] == pytest.approx(0.10)
    assert g["delta_ci95"][0] < 0.10 < g["delta_ci95"][1]
    assert g["delta_ci95"][0] > 0  # 30 vs 10 discordant pairs is a real difference
    assert g["p_value"] == pytest.approx(mcnemar_exact(10, 30))
    assert (g["a_right_b_wrong"], g["b_right_a_wrong"]) == (10, 30)
    tokens_a = sum(1000 + i % 50 for i in range(200)) / 200
    tokens_b = sum((1000 + i % 50) // 2 for i in range(200)) / 200
    assert g["tokens_ratio"] == pytest.approx(tokens_b / tokens_a)
    assert g["tokens_ratio_ci95"][0] <= g["tokens_ratio"] <= g["tokens_ratio_ci95"][1]
    assert g["reflective_ratio_a"] == 1.0 and g["reflective_ratio_b"] == 0.25
    assert g["reflective_ratio_delta"] == pytest.approx(-0.75)

    m = result["benchmarks"]["math500"]
    assert m["delta"] == 0 and m["p_value"] == 1.0
    assert m["tokens_ratio"] == pytest.approx(0.4, abs=1e-3)
    assert list(m["levels"]) == ["1", "2", "3", "4", "5"]
    assert m["levels"]["5"]["mean_tokens_a"] == 2500
    assert (
        m["levels"]["3"]["reflective_ratio_a"] == 1 and m["levels"]["3"]["reflective_ratio_b"] == 0
    )

    avg = result["average"]
    assert avg["delta"] == pytest.approx(0.05)
    assert avg["delta_ci95"][0] < 0.05 < avg["delta_ci95"][1]
    assert avg["tokens_ratio"] == pytest.approx(
        (tokens_b + m["mean_tokens_b"]) / (tokens_a + m["mean_tokens_a"])
    )
    assert avg["tokens_ratio_ci95"][0] <= avg["tokens_ratio"] <= avg["tokens_ratio_ci95"][1]
    assert 0 < avg["p_value"] < 0.05

    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["benchmarks"]["gsm8k"]["delta"] == pytest.approx(0.10)
    assert len(saved["a_right_b_wrong"]) == 10 and len(saved["b_right_a_wrong"]) == 30
    dropped = [json.loads(x) for x in (tmp_path / "cmp" / "a_right_b_wrong.jsonl").open()]
    assert {d["id"] for d in dropped} == set(range(10))
    assert dropped[0]["a"]["response"] and dropped[0]["b"]["response"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "macro average" in md and "math500 by level" in md and "<table>" in md


def test_only_shared_items_count_and_questions_shown(tmp_path, data_dir):
    a = write_run(
        tmp_path / "a",
        [{"bench": "gsm8k", "id": i, "correct": True, "tokens": 10} for i in range(6)],
    )
    b = write_run(
        tmp_path / "b",
        [{"bench": "gsm8k", "id": i, "correct": i != 2, "tokens": 5} for i in range(2, 9)],
    )
    result = write_compare(a, b, tmp_path / "cmp", data_dir=data_dir, resamples=200)
    g = result["benchmarks"]["gsm8k"]
    assert g["n"] == 4 and g["only_in_a"] == 2 and g["only_in_b"] == 3
    assert g["delta"] == pytest.approx(-0.25)
    first_question = json.loads((data_dir / "gsm8k" / "test.jsonl").open().readlines()[2])
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert first_question["question"][:30] in md


def test_bad_inputs_name_the_file_and_line(tmp_path):
    a = write_run(tmp_path / "a", [{"bench": "gsm8k", "id": 0, "correct": True, "tokens": 1}])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_text(
        '{"bench": "gsm8k", "id": 0, "correct": true, "tokens": 1}\n{oops\n'
    )
    with pytest.raises(L2SError, match=r"results.jsonl:2"):
        write_compare(a, bad, tmp_path / "cmp")
    other = write_run(
        tmp_path / "other", [{"bench": "math500", "id": 0, "correct": 1, "tokens": 1}]
    )
    with pytest.raises(L2SError, match="share no"):
        write_compare(a, other, tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "compare.json").exists()


def test_cli_compare_writes_files_and_exits_2_on_error(tmp_path):
    a, b = paired_runs(tmp_path, n=40, a_only=2, b_only=5)
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "l2smerge",
            "compare",
            str(a),
            str(b),
            "-o",
            str(out),
            "--resamples",
            "200",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "macro average" in proc.stdout
    assert (out / "compare.json").exists() and (out / "compare.md").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "l2smerge",
            "compare",
            str(a),
            str(tmp_path / "nope"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_runs_without_token_counts_and_a_cut_last_line(tmp_path):
    # a replayed run without --tokenizer has tokens: null; a killed run leaves a cut line
    a = write_run(
        tmp_path / "a",
        [
            {"bench": "math500", "id": i, "correct": True, "tokens": None, "level": 1}
            for i in range(5)
        ],
    )
    b = write_run(
        tmp_path / "b",
        [
            {"bench": "math500", "id": i, "correct": i > 0, "tokens": None, "level": 1}
            for i in range(5)
        ],
    )
    with (b / "results.jsonl").open("a") as fh:
        fh.write('{"bench": "math500", "id": 9, "corr')
    result = write_compare(a, b, tmp_path / "cmp", resamples=100)
    m = result["benchmarks"]["math500"]
    assert m["n"] == 5 and m["delta"] == pytest.approx(-0.2)
    assert m["tokens_ratio"] is None and m["tokens_ratio_ci95"] == [None, None]
    assert result["average"]["tokens_ratio"] is None
    assert "–" in (tmp_path / "cmp" / "compare.md").read_text()
