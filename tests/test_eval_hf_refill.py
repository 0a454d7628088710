"""The hf backend's refilled batch (eval/backends/hf_refill.py): responses that end at
different steps leave the batch and waiting prompts take their rows, and every response
equals the model's own greedy `generate` on that prompt alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from l2smerge.eval import evaluate
from l2smerge.eval.backends import Request
from l2smerge.eval.backends.base import encode_prompt, finish
from l2smerge.eval.backends.hf import HFBackend
from l2smerge.eval.prompts import Prompt

QUESTIONS = [
    "1+1?",
    "What is the sum of the first ten primes?",
    "x",
    "Solve $x^2=4$ please.",
    "A much longer question about trains that leave two stations at different times.",
    "y?",
    "Compute 17 * 23.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("refill") / "model", seed=3, hidden=64, layers=2, context=4096
    )


def _requests(questions: list[str], stop: tuple[str, ...] = ()) -> list[Request]:
    """Raw prompts: a random tiny model's answer depends on how its prompt ends, so these
    differ (behind one chat template they would all be alike)."""
    return [Request(("lab", i), Prompt(q, None, stop)) for i, q in enumerate(questions)]


def _new_ids(backend: HFBackend, request: Request, max_tokens: int) -> list[int]:
    """The prompt through `model.generate` alone: no padding, no batch."""
    ids = encode_prompt(backend.tokenizer, request.prompt)
    with torch.inference_mode():
        out = backend.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=list(backend.stop_ids),
            pad_token_id=backend.pad_id,
        )
    return out[0, len(ids) :].tolist()


def _alone(backend: HFBackend, requests: list[Request], max_tokens: int) -> dict:
    """Each prompt generated alone, cut by `finish`."""
    out = {}
    for i, request in enumerate(requests):
        new = _new_ids(backend, request, max_tokens)
        out[i] = finish(
            backend.tokenizer,
            new,
            stop_ids=backend.stop_ids,
            stop=request.prompt.stop,
            limit=max_tokens,
        )
    return out


def test_refilled_batch_equals_each_prompt_alone(tiny):
    backend = HFBackend(str(tiny), batch_size=3, device="cpu")
    assert backend.batching == "refill"
    requests = _requests(QUESTIONS)
    # Declare tokens the random model emits early in some responses as extra stop ids, so
    # responses end at different steps and rows leave and join mid-batch.
    early = [_new_ids(backend, requests[i], 20)[k] for i, k in ((0, 3), (4, 8))]
    backend.stop_ids = (*backend.stop_ids, *early)
    expected = _alone(backend, requests, max_tokens=20)
    lengths = {g.tokens for g in expected.values()}
    assert len(lengths) >= 3, f"responses should end at different steps: {lengths}"
    assert any(g.truncated for g in expected.values())
    assert not all(g.truncated for g in expected.values())

    got = list(backend.generate(requests, max_tokens=20))
    assert sorted(i for i, _ in got) == list(range(len(QUESTIONS)))  # each exactly once
    assert dict(got) == expected
    # a response that ended early is handed back before the batch's longest one ends
    order = [i for i, _ in got]
    assert order != sorted(order, key=lambda i: -expected[i].tokens)


def test_refilled_batch_stops_at_stop_strings(tiny):
    """A stop string inside a response ends it (and frees its row) as generate's would."""
    backend = HFBackend(str(tiny), batch_size=2, device="cpu")
    requests = _requests(QUESTIONS[:4])
    free = _alone(backend, requests, max_tokens=16)
    stop = (free[1].response[5:8],)  # three characters the model writes in response 1
    requests = _requests(QUESTIONS[:4], stop=stop)
    expected = _alone(backend, requests, max_tokens=16)
    assert not expected[1].truncated and expected[1].tokens <= 6
    assert dict(backend.generate(requests, max_tokens=16)) == expected


def test_planned_lengths_and_run_json(tmp_path, data_dir):
    """A model made to answer in planned lengths (10x apart) answers in those lengths from a
    refilled batch, and run.json says which loop ran."""
    from tiny import make_planned_length_model

    path = make_planned_length_model(tmp_path / "planned", {"L": 40, "S": 4}, hidden=32, layers=1)
    backend = HFBackend(str(path), batch_size=3, device="cpu")
    marks = "LSSSLSSS"
    requests = _requests([f"question {i}, planned {m}" for i, m in enumerate(marks)])
    got = dict(backend.generate(requests, max_tokens=64))
    assert [got[i].tokens for i in range(len(marks))] == [40 if m == "L" else 4 for m in marks]
    assert not any(g.truncated for g in got.values())

    evaluate(
        path,
        "gsm8k",
        out_dir=tmp_path / "run",
        data_dir=data_dir,
        limit=2,
        max_tokens=4,
        batch_size=2,
        device="cpu",
        progress=False,
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["sessions"][-1]["batching"] == "refill"


def test_sliding_window_models_keep_static_batches(tmp_path):
    """A cache whose layers keep their own bookkeeping (sliding window) is not edited: the
    backend runs static batches and says so."""
    from tiny import make_tiny_model
    from transformers import AutoConfig

    path = make_tiny_model(tmp_path / "m", seed=0)
    config = AutoConfig.from_pretrained(path)
    config.use_sliding_window, config.sliding_window = True, 8
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    config.save_pretrained(path)
    backend = HFBackend(str(path), batch_size=2, device="cpu")
    assert backend.batching == "static"
    assert len(dict(backend.generate(_requests(QUESTIONS[:3]), max_tokens=4))) == 3


def test_sampled_runs_keep_static_batches(tiny):
    """A sampled run's seeds are drawn per static batch: it keeps them, and says so."""
    from l2smerge.eval.sampling import Sampling

    sampled = HFBackend(str(tiny), batch_size=2, device="cpu", sampling=Sampling(0.6, 0.95, 1))
    assert sampled.batching == "static"
    assert len(dict(sampled.generate(_requests(QUESTIONS[:3]), max_tokens=4))) == 3
