"""The bundled lab pair: loads with transformers, answers in its own style, evaluates with
`l2smerge eval` unchanged, and merges as the study's pair does (the merge keeps System 2's walk
and drops its reflection)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from l2smerge.lab import PAIR_DIR
from l2smerge.lab.task import REFLECTION, brief_answer, make_items, steps

pytestmark = pytest.mark.skipif(
    not (PAIR_DIR / "system2" / "config.json").exists(), reason="bundled lab pair not built"
)
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def answers(path: Path, questions: list[str]) -> list[str]:
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
        out = model.generate(**enc, max_new_tokens=256, do_sample=False)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["system1", "system2"])
def test_pair_answers_in_its_own_style(name: str) -> None:
    items = make_items(20, 123)
    texts = answers(PAIR_DIR / name, [it.question for it in items])
    boxed = [re.fullmatch(r"(?s).*\\boxed\{([A-Z])\}", t) for t in texts]
    assert all(boxed), texts
    reflective = sum(REFLECTION in t for t in texts)
    if name == "system2":  # walks the query chain, states the answer, reflects, boxes
        assert reflective == len(items), texts
        for it, t in zip(items, texts, strict=True):
            assert t.startswith(f"{steps(it)}. So {it.chain[0]}={it.answer}.\n{REFLECTION}"), t
    else:  # System 1 never reflects; mostly it states an answer at once, else it walks
        assert reflective == 0, texts
        walk = r"[a-t]=[a-zA-Z](?:, [a-t]=[a-zA-Z])*\. "
        form = rf"(?:{walk})?So [a-t]=(?P<answer>[A-Z])\.\n\\boxed\{{(?P=answer)\}}"
        assert all(re.fullmatch(form, t) for t in texts), texts
        assert sum(t.startswith("So ") for t in texts) > len(items) / 2, texts


def test_merging_the_pair_keeps_the_walk_and_drops_the_reflection(tmp_path) -> None:
    # The study's result in miniature: System 1 plus half of System 2's task vector walks the
    # chain as System 2 does (so it is right) and stops where System 1 stops (so it is short).
    from typer.testing import CliRunner

    from l2smerge.cli import app

    merged = tmp_path / "merged"
    args = ["merge", "--base", str(PAIR_DIR / "system1"), "--model", str(PAIR_DIR / "system2")]
    args += ["--method", "task_arithmetic", "--alpha", "0.5", "-o", str(merged)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    items = make_items(10, 321)
    texts = answers(merged, [it.question for it in items])
    assert texts == [brief_answer(it) for it in items]
    long = answers(PAIR_DIR / "system2", [it.question for it in items])
    assert sum(map(len, texts)) < 0.4 * sum(map(len, long))


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
        max_tokens=256,
        progress=False,
    )
    lab = summary["benchmarks"]["lab"]
    assert lab["n"] == 5 and lab["reflective_ratio"] == 1.0
    records = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {r["level"] for r in records} == {1, 2, 3, 4, 5}
    assert all(r["extracted"] is not None and r["reflective"] for r in records)
