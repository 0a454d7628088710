"""The run-directory contract, resume, the summary fields and every user-facing error, through
`evaluate` and the CLI, with the replay backend (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from l2smerge.eval import evaluate
from l2smerge.eval.benchmarks import load_items
from l2smerge.eval.runs import RunDir
from l2smerge.util.errors import L2SError

BENCH_FIELDS = {
    "n",
    "accuracy",
    "accuracy_ci95",
    "mean_tokens",
    "median_tokens",
    "truncated_ratio",
    "reflective_ratio",
    "reflections_per_response",
}
RESULT_FIELDS = {
    "bench",
    "id",
    "response",
    "extracted",
    "gold",
    "correct",
    "tokens",
    "truncated",
    "reflective",
    "reflections",
}


def replay_file(path, data_dir, benches=("math500", "gsm8k"), n=6, wrong_every=3):
    rows = []
    for bench in benches:
        for it in load_items(bench, data_dir, limit=n):
            answer = it.gold if it.id % wrong_every else "123456789"
            text = f"Wait, let me check. So the answer is \\boxed{{{answer}}}."
            rows.append({"bench": bench, "id": it.id, "response": text})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_replay(tmp_path, data_dir, replay, **kw):
    return evaluate(
        "label",
        kw.pop("benches", None),
        out_dir=tmp_path / "run",
        backend="replay",
        responses=replay,
        data_dir=data_dir,
        progress=False,
        **kw,
    )


def test_summary_and_results_contract(tmp_path, data_dir):
    replay = replay_file(tmp_path / "r.jsonl", data_dir)
    summary = run_replay(tmp_path, data_dir, replay)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["model"] == "label"
    assert list(summary["benchmarks"]) == ["math500", "gsm8k"]
    for name, m in summary["benchmarks"].items():
        assert BENCH_FIELDS <= set(m), name
        assert m["n"] == 6
        assert m["accuracy"] == pytest.approx(4 / 6)  # ids 0 and 3 are wrong
        lo, hi = m["accuracy_ci95"]
        assert 0 <= lo < 4 / 6 < hi <= 1
        assert m["reflective_ratio"] == 1.0
        assert m["reflections_per_response"] == 2.0
    assert "per_level" in summary["benchmarks"]["math500"]
    assert "per_level" not in summary["benchmarks"]["gsm8k"]
    per_level = summary["benchmarks"]["math500"]["per_level"]
    assert sum(m["n"] for m in per_level.values()) == 6
    assert summary["average"]["accuracy"] == pytest.approx(4 / 6)
    assert summary["average"]["n"] == 12
    lines = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    for line in lines:
        assert RESULT_FIELDS <= set(line)
        assert line["correct"] == (line["id"] % 3 != 0)
    assert all("level" in x for x in lines if x["bench"] == "math500")


def test_tokens_counted_with_tokenizer(tmp_path, data_dir):
    from tiny import byte_tokenizer

    byte_tokenizer().save_pretrained(tmp_path / "tok")
    replay = replay_file(tmp_path / "r.jsonl", data_dir, benches=("gsm8k",), n=2)
    summary = run_replay(tmp_path, data_dir, replay, tokenizer=tmp_path / "tok", max_tokens=40)
    lines = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    for line in lines:
        assert line["tokens"] == len(line["response"].encode())  # one token per byte
        assert line["truncated"] == (line["tokens"] >= 40)
    assert summary["benchmarks"]["gsm8k"]["mean_tokens"] == pytest.approx(
        sum(x["tokens"] for x in lines) / 2
    )


def test_rerun_resumes_without_duplicates(tmp_path, data_dir):
    replay = replay_file(tmp_path / "r.jsonl", data_dir, n=4)
    results = tmp_path / "run" / "results.jsonl"
    run_replay(tmp_path, data_dir, replay, limit=2)
    assert len(results.read_text().splitlines()) == 4
    # A killed writer leaves half a line: it is dropped and that item evaluated again.
    first = results.read_text().splitlines()[0]
    with results.open("a") as f:
        f.write(first[: len(first) // 2])
    summary = run_replay(tmp_path, data_dir, replay)
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    keys = [(x["bench"], x["id"]) for x in lines]
    assert len(keys) == len(set(keys)) == 8
    assert summary["average"]["n"] == 8


def test_rerun_into_a_different_run_is_refused(tmp_path, data_dir):
    replay = replay_file(tmp_path / "r.jsonl", data_dir, n=2)
    run_replay(tmp_path, data_dir, replay)
    with pytest.raises(L2SError, match="another model.*'label' replayed from .* there, 'other'"):
        evaluate(
            "other",
            None,
            out_dir=tmp_path / "run",
            backend="replay",
            responses=replay,
            data_dir=data_dir,
            progress=False,
        )


def test_malformed_results_line_is_named(tmp_path):
    run = RunDir(tmp_path)
    line = '{"bench": "gsm8k", "id": 0, "correct": true, "tokens": 3}'
    (tmp_path / "results.jsonl").write_text(f'{line}\nnot json\n{{"x": 1}}\n')
    with pytest.raises(L2SError, match=r"results.jsonl:2: not valid JSON"):
        run.load_results()


def test_unknown_bench(tmp_path, data_dir):
    with pytest.raises(L2SError, match="unknown benchmark 'gsm9k'.*known benchmarks: gsm8k"):
        evaluate("m", "gsm9k", out_dir=tmp_path / "o", data_dir=data_dir, progress=False)


def test_missing_data_says_where(tmp_path, monkeypatch):
    with pytest.raises(L2SError, match=r"lab/test.jsonl not found; put the lab test split"):
        evaluate("m", "lab", out_dir=tmp_path / "o", data_dir=tmp_path, progress=False)
    monkeypatch.delenv("L2SMERGE_DATA_DIR", raising=False)
    with pytest.raises(L2SError, match="pass --data-dir DIR or set L2SMERGE_DATA_DIR"):
        evaluate("m", "gsm8k", out_dir=tmp_path / "o", progress=False)


def test_malformed_benchmark_jsonl_names_line(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "test.jsonl").write_text(
        '{"question": "1+1?", "answer": "2", "level": 1}\n{"question": "2+2?", "answer": \n'
    )
    with pytest.raises(L2SError, match=r"lab/test.jsonl:2: not valid JSON"):
        load_items("lab", tmp_path)


def test_lab_bench_reads_question_answer_level(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "test.jsonl").write_text(
        '{"question": "1+1?", "answer": "2", "level": 1}\n'
        '{"question": "12*3?", "answer": 36, "level": 2}\n'
    )
    replay = tmp_path / "r.jsonl"
    replay.write_text(
        '{"bench": "lab", "id": 0, "response": "\\\\boxed{2}"}\n'
        '{"bench": "lab", "id": 1, "response": "\\\\boxed{35}"}\n'
    )
    summary = evaluate(
        "m",
        "lab",
        out_dir=tmp_path / "o",
        backend="replay",
        responses=replay,
        data_dir=tmp_path,
        progress=False,
    )
    lab = summary["benchmarks"]["lab"]
    assert lab["accuracy"] == 0.5
    assert lab["per_level"]["1"]["accuracy"] == 1.0
    assert lab["per_level"]["2"]["accuracy"] == 0.0


def test_replay_errors(tmp_path, data_dir):
    bad_id = tmp_path / "bad_id.jsonl"
    bad_id.write_text(
        '{"bench": "aime24", "id": 0, "response": "1"}\n'
        '{"bench": "aime24", "id": 30, "response": "1"}\n'
    )
    with pytest.raises(L2SError, match=r"bad_id.jsonl:2: aime24 has no item id 30"):
        evaluate(
            "m",
            None,
            out_dir=tmp_path / "o",
            backend="replay",
            responses=bad_id,
            data_dir=data_dir,
            progress=False,
        )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"bench": "aime24", "id": 0, "response": "1"}\n{"bench": "aime24"\n')
    with pytest.raises(L2SError, match=r"broken.jsonl:2: not valid JSON"):
        evaluate(
            "m",
            None,
            out_dir=tmp_path / "o",
            backend="replay",
            responses=broken,
            data_dir=data_dir,
            progress=False,
        )
    no_field = tmp_path / "no_field.jsonl"
    no_field.write_text('{"bench": "aime24", "id": "0", "response": "1"}\n')
    with pytest.raises(L2SError, match=r"no_field.jsonl:1: field 'id' must be a int"):
        evaluate(
            "m",
            None,
            out_dir=tmp_path / "o",
            backend="replay",
            responses=no_field,
            data_dir=data_dir,
            progress=False,
        )
    with pytest.raises(L2SError, match="no responses for bench 'gsm8k'"):
        evaluate(
            "m",
            "gsm8k",
            out_dir=tmp_path / "o",
            backend="replay",
            responses=bad_id,
            data_dir=data_dir,
            progress=False,
        )


def test_cli_prints_table_and_errors_exit_2(tmp_path, data_dir):
    replay = replay_file(tmp_path / "r.jsonl", data_dir, n=3)
    cmd = [
        sys.executable,
        "-m",
        "l2smerge",
        "eval",
        "label",
        "--backend",
        "replay",
        "--responses",
        str(replay),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    ok = subprocess.run([*cmd, "-o", str(tmp_path / "run")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "math500" in ok.stdout and "average" in ok.stdout
    bad = subprocess.run(
        [*cmd, "--bench", "nope", "-o", str(tmp_path / "run2")], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "unknown benchmark 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_all_means_the_seven_benchmarks():
    from l2smerge.eval.benchmarks import parse_bench_names

    assert parse_bench_names("all") == [
        "gsm8k",
        "math500",
        "minerva_math",
        "olympiadbench",
        "college_math",
        "aime24",
        "amc23",
    ]
    assert parse_bench_names("lab, gsm8k,lab") == ["lab", "gsm8k"]


def test_prompts(tmp_path):
    from l2smerge.eval.prompts import TOOLKIT_STOP, PromptBuilder

    raw = PromptBuilder("auto")("What is $\\frac{1}{2}$?")
    assert raw.text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is $\\frac{1}{2}$?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert raw.messages is None and raw.raw and raw.stop == TOOLKIT_STOP
    assert PromptBuilder("cot").name == "qwen25-math-cot"  # the old name
    few = PromptBuilder("fewshot")("What is 3+4?")
    assert few.text.endswith("\n\n\nQuestion: What is 3+4?\nAnswer:")
    assert few.text.startswith("Question: ") and few.text.count("\\boxed{") == 4
    assert few.messages is None and few.stop == (*TOOLKIT_STOP, "\n\nQuestion:")
    chat = PromptBuilder("chat")("What is 3+4?")  # no tokenizer: for a chat endpoint only
    assert chat.text is None and chat.messages[1] == {"role": "user", "content": "What is 3+4?"}
    template = tmp_path / "t.txt"
    template.write_text("Solve {question} and box it: \\boxed{{}}\n")
    custom = PromptBuilder(str(template))("$x^{2}=4$")
    assert custom.text == "Solve $x^{2}=4$ and box it: \\boxed{{}}\n"
    assert PromptBuilder(str(template)).name == f"file:{template}"
    template.write_text("no placeholder")
    with pytest.raises(L2SError, match="has no {question} placeholder"):
        PromptBuilder(str(template))
    with pytest.raises(L2SError, match="is neither one of auto, qwen25-math-cot, chat, fewshot"):
        PromptBuilder("cott")
