"""The bundled lab pair: loads with transformers, answers easy items, evaluates with `l2smerge
eval` unchanged (System 2 reflects, System 1 does not)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from l2smerge.lab import PAIR_DIR
from l2smerge.lab.task import make_items

pytestmark = pytest.mark.skipif(
    not (PAIR_DIR / "system2" / "config.json").exists(), reason="bundled lab pair not built"
)
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def answers(name: str, questions: list[str]) -> list[str]:
    path = PAIR_DIR / name
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [
        tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=160, do_sample=False)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["system1", "system2"])
def test_pair_answers_in_its_own_style(name: str) -> None:
    # The bundled pair answers in the trained format; its accuracy is measured (and, at this
    # training budget, near chance: docs/lab.md), not asserted here.
    items = make_items(10, 123)
    texts = answers(name, [it.question for it in items])
    boxed = [re.fullmatch(r"(?s).*\\boxed\{([A-Z])\}", t) for t in texts]
    assert all(boxed), texts
    reflective = sum("Wait, let me double check: " in t for t in texts)
    if name == "system2":
        assert reflective == 10, texts
        for it, t in zip(items, texts, strict=True):
            assert t.startswith(f"{it.chain[0]}="), t  # walks the chain from the query
    else:
        assert reflective == 0 and max(len(t) for t in texts) < 20, texts


def test_exported_pair_evaluates_with_l2smerge_eval(tmp_path) -> None:
    from l2smerge.eval import evaluate
    from l2smerge.lab.bench import export

    paths = export(tmp_path / "lab")
    summary = evaluate(
        paths["system2"],
        "lab",
        out_dir=tmp_path / "run",
        data_dir=tmp_path / "lab" / "benchmarks",
        limit=5,
        max_tokens=160,
        progress=False,
    )
    lab = summary["benchmarks"]["lab"]
    assert lab["n"] == 5 and lab["reflective_ratio"] == 1.0
    records = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {r["level"] for r in records} == {1, 2, 3, 4, 5}
    assert all(r["extracted"] is not None and r["reflective"] for r in records)
