"""The hf backend end to end on a tiny random model: batched generation equals one-by-one
generation, eos and the token limit are read right, and a run killed mid-way then rerun has
every item exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2smerge.eval import evaluate
from l2smerge.eval.backends import Generation, Request
from l2smerge.eval.backends.base import finish
from l2smerge.eval.backends.hf import HFBackend
from l2smerge.eval.prompts import PromptBuilder

QUESTIONS = ["1+1?", "What is the sum of the first ten primes?", "x", "Solve $x^2=4$ please."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=1, context=4096)


def requests_for(backend, questions, prompt="chat"):
    build = PromptBuilder(prompt, backend.tokenizer)
    return [Request(("lab", i), build(q)) for i, q in enumerate(questions)]


def test_batched_equals_one_by_one(tiny):
    batched = HFBackend(str(tiny), batch_size=4, device="cpu")
    single = HFBackend(str(tiny), batch_size=1, device="cpu")
    a = dict(batched.generate(requests_for(batched, QUESTIONS), max_tokens=12))
    b = dict(single.generate(requests_for(single, QUESTIONS), max_tokens=12))
    assert sorted(a) == list(range(len(QUESTIONS)))
    for i in a:
        assert a[i] == b[i]
        assert a[i].tokens == 12 and a[i].truncated  # a random model never says eos here


def test_chat_prompt_uses_chat_template(tiny):
    backend = HFBackend(str(tiny), device="cpu")
    prompt = requests_for(backend, ["What is 2+2?"])[0].prompt
    assert prompt.text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_stops_at_eos(tiny, tmp_path):
    """Declare the token the model emits 4th as an extra eos: generation must stop there,
    count 3 tokens and not call it truncated."""
    backend = HFBackend(str(tiny), device="cpu")
    request = requests_for(backend, QUESTIONS[:1])
    [(_, free)] = list(backend.generate(request, max_tokens=8))
    ids = backend.tokenizer.encode(free.response, add_special_tokens=False)
    eos = ids[3]
    if eos in ids[:3]:
        pytest.skip("the tiny model repeats its 4th token earlier; pick another seed")
    backend.stop_ids = (*backend.stop_ids, eos)
    [(_, stopped)] = list(backend.generate(request, max_tokens=8))
    assert stopped.tokens == 3
    assert not stopped.truncated
    assert stopped.response == backend.tokenizer.decode(ids[:3])


def test_evaluate_end_to_end(tiny, tmp_path, data_dir):
    summary = evaluate(
        tiny,
        ["gsm8k", "math500"],
        out_dir=tmp_path / "run",
        data_dir=data_dir,
        limit=3,
        max_tokens=6,
        batch_size=2,
        device="cpu",
        progress=False,
    )
    for name in ("gsm8k", "math500"):
        m = summary["benchmarks"][name]
        assert m["n"] == 3 and m["mean_tokens"] == 6 and m["truncated_ratio"] == 1.0
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert summary["tokenizer"] == str(tiny)


def _result_keys(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    keys = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the process was killed
        keys.append((record["bench"], record["id"]))
    return keys


def test_killed_run_resumes_each_item_once(tiny, tmp_path, data_dir):
    out = tmp_path / "run"
    results = out / "results.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "l2smerge",
        "eval",
        str(tiny),
        "--bench",
        "gsm8k",
        "--limit",
        "10",
        "--max-tokens",
        "32",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "-o",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_result_keys(results)) < 3 and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"eval exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _result_keys(results)
    assert 3 <= len(partial) < 10, "the run must be killed mid-way"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    keys = _result_keys(results)
    assert sorted(keys) == [("gsm8k", i) for i in range(10)]
    assert all(json.loads(x) for x in results.read_text().splitlines())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["gsm8k"]["n"] == 10


def test_stop_string_ends_a_response_without_truncation(tiny):
    backend = HFBackend(str(tiny), device="cpu")
    ids = backend.tokenizer.encode("x = 2.\n\nQuestion: next", add_special_tokens=False)
    kept = len(backend.tokenizer.encode("x = 2.", add_special_tokens=False))
    stop = ("\n\nQuestion:",)
    stopped = finish(backend.tokenizer, ids, stop_ids=backend.stop_ids, stop=stop, limit=len(ids))
    # the response and its token count end before the stop string
    assert stopped == Generation("x = 2.", kept, False)
    # hf pads a sequence that ended on a stop string; padding with a stop id changes nothing
    padded = ids + [backend.stop_ids[0]] * 3
    assert finish(backend.tokenizer, padded, stop_ids=backend.stop_ids, stop=stop, limit=99) == (
        Generation("x = 2.", kept, False)
    )
    cut = finish(backend.tokenizer, ids, stop_ids=backend.stop_ids, stop=(), limit=len(ids))
    assert cut.truncated and cut.response == "x = 2.\n\nQuestion: next" and cut.tokens == len(ids)
