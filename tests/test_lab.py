"""The lab task generator, tokenizer and export (the bundled pair: test_lab_pair.py)."""

from __future__ import annotations

import json
import random
import re

import pytest

from l2smerge.lab.bench import benchmark_items, calibration_records, export
from l2smerge.lab.task import (
    CONSTANTS,
    LEVELS,
    NUM_CHAINS,
    REFLECTION,
    VARIABLES,
    brief_answer,
    copy_drill,
    long_answer,
    lookup_drill,
    make_item,
    make_items,
    short_answer,
    steps,
)
from l2smerge.lab.tokenizer import build_tokenizer
from l2smerge.util.errors import L2SError

REFLECTIVE = ("wait", "re-examine", "recap", "double-check", "let me check", "let me verify")


def resolve(question: str) -> str:
    """Follow the query chain through the question's assignments (an independent solver)."""
    body, query = question.split(". What is ")
    table = dict(a.split("=") for a in body.split(","))
    value = query.rstrip("?")
    while value not in CONSTANTS:
        value = table[value]
    return value


@pytest.mark.parametrize("level", LEVELS)
def test_item_has_level_hops_and_no_shortcut(level: int) -> None:
    rng = random.Random(level)
    for _ in range(50):
        item = make_item(rng, level)
        body = item.question.split(". What is ")[0]
        assignments = body.split(",")
        assert len(assignments) == NUM_CHAINS * level
        assert resolve(item.question) == item.answer
        assert len(item.chain) == level + 1
        constants = [a.split("=")[1] for a in assignments if a.split("=")[1] in CONSTANTS]
        # every chain ends in its own constant: the answer is one of NUM_CHAINS candidates
        assert len(set(constants)) == NUM_CHAINS and item.answer in constants
        # variables and constants never share a letter, even ignoring case (graders may)
        assert not {v.upper() for v in VARIABLES} & set(CONSTANTS)


def test_items_are_deterministic_in_the_seed() -> None:
    assert make_items(20, 7) == make_items(20, 7)
    assert make_items(20, 7) != make_items(20, 8)
    assert [it.level for it in make_items(10, 0)] == [1, 2, 3, 4, 5] * 2


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        make_item(random.Random(0), 9)


def test_answers_short_brief_and_long() -> None:
    item = make_items(5, 3)[4]
    short, brief = short_answer(item), brief_answer(item)
    head, value = item.chain[0], item.answer
    for text in (short, brief, long_answer(item, 0), long_answer(item, 3)):
        assert re.findall(r"\\boxed\{([A-Z])\}", text) == [value]  # one box, at the end
        assert text.endswith(f"\\boxed{{{value}}}")
        assert f"So {head}={value}." in text  # the answer is stated before any reflection
    # System 1's usual answer skips the walk; its other answer and System 2's walk it
    assert steps(item) not in short and brief.startswith(steps(item) + ". ")
    assert not any(w in (short + brief).lower() for w in REFLECTIVE)
    # System 2: the walk, the stated answer, `rounds` rounds that repeat both, the box
    assert long_answer(item, 0) == brief  # with no reflection, System 2 says what System 1 can
    for rounds in range(4):
        long = long_answer(item, rounds)
        assert long.count(REFLECTION) == rounds and long.count(steps(item)) == rounds + 1
        first_reflection = long.find(REFLECTION)
        assert first_reflection == -1 or long.index(f"So {head}={value}.") < first_reflection
    assert len(long_answer(item, 2)) > 4 * len(short)


def test_training_answers_mix_as_configured() -> None:
    from l2smerge.lab import train

    rng = random.Random(0)
    item = make_items(5, 3)[4]
    system1 = [train.system1_answer(item, rng) for _ in range(2000)]
    walked = sum(a == brief_answer(item) for a in system1) / len(system1)
    assert set(system1) == {short_answer(item), brief_answer(item)}
    assert abs(walked - train.S1_WALK_SHARE) < 0.05
    for level in LEVELS:  # System 2 reflects more on longer chains, by the configured weights
        item = make_item(random.Random(level), level)
        weights = train.REFLECTION_ROUNDS[level]
        system2 = [train.system2_answer(item, rng).count(REFLECTION) for _ in range(2000)]
        shares = [system2.count(k) / len(system2) for k in range(len(weights))]
        assert all(abs(s - w) < 0.05 for s, w in zip(shares, weights, strict=True))
    mean_rounds = [sum(k * w for k, w in enumerate(train.REFLECTION_ROUNDS[lv])) for lv in LEVELS]
    assert mean_rounds == sorted(mean_rounds) and mean_rounds[0] < mean_rounds[-1]


def test_tokenizer_round_trip_and_chat_template() -> None:
    tok = build_tokenizer()
    item = make_items(5, 1)[4]
    messages = [
        {"role": "system", "content": "Please reason step by step."},
        {"role": "user", "content": item.question},
    ]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == f"<|im_start|>user\n{item.question}<|im_end|>\n<|im_start|>assistant\n"
    text = prompt + long_answer(item) + "<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    # one token per character, except specials and "=x" pieces (one token each)
    specials = 2 * (len("<|im_start|>") - 1) + 2 * (len("<|im_end|>") - 1)
    assert len(ids) == len(text) - specials - len(re.findall(r"=[A-Za-z]", text))
    pieces = tok.convert_ids_to_tokens(tok("q=u,u=X", add_special_tokens=False)["input_ids"])
    assert pieces == ["q", "=u", ",", "u", "=X"]


def test_drills_walk_every_chain_and_copy() -> None:
    rng = random.Random(4)
    item = make_items(5, 9)[3]
    head, *walks = lookup_drill(item, rng).split("\n")
    assert head == item.question.split(". What is ")[0]
    assert sorted(walks) == sorted(
        ", ".join(f"{ch[i]}={ch[i + 1]}" for i in range(len(ch) - 1)) + "." for ch in item.chains
    )
    first, second = copy_drill(rng).split("\n")
    assert first == second and 8 <= len(first) <= 48


def test_test_set_and_calibration() -> None:
    items = benchmark_items()
    assert len(items) == 250 and {it.level for it in items} == set(LEVELS)
    assert items[:5] == benchmark_items(per_level=1)  # --limit N keeps every level
    records = calibration_records()
    assert len(records) == 100
    assert set(records[0]) == {"question", "short_answer", "long_answer"}
    questions = {it.question for it in items}
    assert not questions & {r["question"] for r in records}


def test_export_writes_benchmark_layout(tmp_path) -> None:
    pair = {}
    for name in ("system1", "system2"):  # stand-ins: export only copies the folders
        (tmp_path / "src" / name).mkdir(parents=True)
        (tmp_path / "src" / name / "config.json").write_text("{}")
        pair[name] = tmp_path / "src" / name
    out = tmp_path / "out"
    export(out, pair=pair)
    assert (out / "system1" / "config.json").exists()
    lines = (out / "benchmarks" / "lab" / "test.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"question", "answer", "level"} and len(lines) == 250
    assert len((out / "calibration.jsonl").read_text().splitlines()) == 100
    with pytest.raises(L2SError, match="already exists"):
        export(out, pair=pair)
    export(out, pair=pair, force=True)


def test_saved_tokenizer_encodes_the_same_when_loaded_for_a_qwen2_model(tmp_path) -> None:
    # transformers loads a qwen2 model folder's tokenizer as Qwen2Tokenizer (byte-level);
    # the lab tokenizer must give the very ids it was trained with under that class too.
    from transformers import AutoTokenizer, Qwen2Config

    built = build_tokenizer()
    built.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(built)).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    item = make_items(5, 2)[4]
    messages = [{"role": "user", "content": item.question}]
    prompt = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = prompt + long_answer(item) + "<|im_end|>"
    ids = built(text, add_special_tokens=False)["input_ids"]
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.decode(ids) == text


def test_train_script_runs_end_to_end_at_toy_scale(tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from l2smerge.lab import train

    for name, value in dict(
        PRE_STEPS=2,
        S1_STEPS=2,
        S2_STEPS=2,
        PRE_WARMUP=1,
        S1_WARMUP=1,
        S2_WARMUP=1,
        BATCH=4,
        CHECK_ITEMS=5,
        MAX_NEW_TOKENS=4,
    ).items():
        monkeypatch.setattr(train, name, value)
    train.main(tmp_path, seed=3, threads=1)
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "system1")
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "system2")
    assert one.config.model_type == "qwen2" and one.config.num_hidden_layers == train.LAYERS
    # System 2 is System 1 fine-tuned: same shapes, different weights
    w1, w2 = one.state_dict(), two.state_dict()
    assert w1.keys() == w2.keys()
    assert any(not (w1[k] == w2[k]).all() for k in w1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["system1", "system2"]
