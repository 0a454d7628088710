"""The study's protocol: `qwen25-math-cot` byte for byte whatever the tokenizer's template, the
toolkit's stops (cut and counted right on a real model), run.json's identity and metadata,
resumes refused across identities, failed evals that lock nothing, pickle refusal, and
compare/report/sweep on runs evaluated differently."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from l2smerge.eval import evaluate
from l2smerge.eval.backends.base import QWEN_STOP_IDS, encode_prompt, stop_token_ids
from l2smerge.eval.grading import GRADER_VERSION
from l2smerge.eval.prompts import QWEN25_MATH_COT, TOOLKIT_STOP, PromptBuilder
from l2smerge.util.errors import L2SError

REPO = Path(__file__).resolve().parents[1]
# A real Qwen2.5-vocabulary tokenizer, beside the benchmark data (../shared in a checkout).
QWEN_TOKENIZERS = [
    REPO.parent / "shared" / "tokenizers" / "qwen3",
    *(
        [Path(os.environ["L2SMERGE_DATA_DIR"]).parent / "tokenizers" / "qwen3"]
        if os.environ.get("L2SMERGE_DATA_DIR")
        else []
    ),
]
R1_BOS = "<｜begin▁of▁sentence｜>"
# DeepSeek-R1-Distill's chat template, shortened: BOS, system text bare, User/Assistant tags.
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
LAB = [
    {"question": "What is 1+1?", "answer": "2", "level": 1},
    {"question": "What is 12*3?", "answer": "36", "level": 2},
]


def qwen_tokenizer():
    from transformers import AutoTokenizer

    found = [p for p in QWEN_TOKENIZERS if (p / "tokenizer.json").exists()]
    if not found:
        pytest.skip(f"no Qwen tokenizer at {QWEN_TOKENIZERS[0]}")
    return AutoTokenizer.from_pretrained(found[0])


def r1_style_tokenizer():
    """The Qwen vocabulary with R1-Distill's chat template and a BOS added to encoded text."""
    tokenizer = qwen_tokenizer()
    tokenizer.add_special_tokens({"bos_token": R1_BOS})
    tokenizer.add_bos_token = True
    tokenizer.chat_template = R1_TEMPLATE
    assert tokenizer.encode("x")[0] == tokenizer.bos_token_id  # the fixture is what it claims
    return tokenizer


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

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=4, context=4096)


# -- the study's prompt ---------------------------------------------------------------------


def test_study_prompt_is_the_same_bytes_for_a_qwen_and_an_r1_tokenizer():
    question = "Let $f(x) = 2x^{3} - 1$. Find $f(2)$."
    expected = (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nLet $f(x) = 2x^{3} - 1$. Find $f(2)$."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    qwen, r1 = qwen_tokenizer(), r1_style_tokenizer()
    prompts = {
        name: PromptBuilder("qwen25-math-cot", tok)(question)
        for name, tok in (("qwen", qwen), ("r1", r1))
    }
    assert prompts["qwen"].text == prompts["r1"].text == expected
    assert PromptBuilder("auto", qwen).sha256 == PromptBuilder("cot", r1).sha256
    # token ids: R1's tokenizer adds its BOS, as the toolkit's vLLM call does; nothing else
    ids_qwen = encode_prompt(qwen, prompts["qwen"])
    ids_r1 = encode_prompt(r1, prompts["r1"])
    assert ids_r1 == [r1.bos_token_id, *ids_qwen]
    assert ids_qwen == qwen.encode(expected, add_special_tokens=False)
    assert ids_qwen[0] == qwen.convert_tokens_to_ids("<|im_start|>")  # a special token, no BOS
    # `chat` is where the templates differ (the mismatch the study's prompt avoids)
    chat_qwen = PromptBuilder("chat", qwen)(question).text
    chat_r1 = PromptBuilder("chat", r1)(question).text
    assert chat_qwen == expected
    assert chat_r1.startswith(R1_BOS + "Please reason") and "<|im_start|>" not in chat_r1
    assert PromptBuilder("chat", qwen).sha256 != PromptBuilder("chat", r1).sha256


def test_the_question_is_read_as_the_toolkit_reads_it():
    build = PromptBuilder("qwen25-math-cot")
    assert "\nIs 7 prime? (Yes or No)<|im_end|>" in build("  Is 7 prime?\n", gold="Yes").text
    assert "\nTrue? (True or False)<|im_end|>" in build("True?", gold="false").text
    assert "\nIs 7 prime?<|im_end|>" in build("Is 7 prime?", gold="7").text


def test_stop_ids_like_the_toolkit():
    from tiny import byte_tokenizer

    assert set(QWEN_STOP_IDS) <= set(stop_token_ids(qwen_tokenizer()))
    byte = byte_tokenizer()  # other vocabulary: its EOS, and the model's
    assert stop_token_ids(byte, {5}) == (5, byte.eos_token_id)
    assert TOOLKIT_STOP == ("</s>", "<|im_end|>", "<|endoftext|>")


def _model_emitting_im_end(tiny: Path, tmp_path: Path, question: str) -> tuple[Path, list[int]]:
    """A copy of `tiny` whose EOS is <|endoftext|> (so <|im_end|> is no stop id) and which
    emits <|im_end|> as its third new token: rows of lm_head swapped so <|im_end|> takes the
    logit of the token it would have emitted there. Returns it and the first two tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "im_end_model"
    shutil.copytree(tiny, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    prompt = PromptBuilder("qwen25-math-cot")(question).text
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    third = new[2]
    if third in new[:2] or im_end in new[:2] or third == tokenizer.eos_token_id:
        pytest.skip("the tiny model repeats its third token; pick another seed")
    with torch.no_grad():
        head = model.lm_head.weight
        head[[third, im_end]] = head[[im_end, third]]
    model.save_pretrained(path)
    return path, new[:2]


def test_generation_stops_at_im_end_and_counts_the_tokens_before_it(tiny, tmp_path, lab_data):
    from transformers import AutoTokenizer

    model, first_two = _model_emitting_im_end(tiny, tmp_path, LAB[0]["question"])
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in stop_token_ids(tokenizer)
    summary = evaluate(
        model,
        "lab",
        out_dir=tmp_path / "run",
        prompt="qwen25-math-cot",
        data_dir=lab_data,
        limit=1,
        max_tokens=12,
        device="cpu",
        progress=False,
    )
    line = json.loads((tmp_path / "run" / "results.jsonl").read_text())
    assert line["response"] == tokenizer.decode(first_two)
    assert line["tokens"] == 2 and not line["truncated"]  # counted after the cut
    assert summary["benchmarks"]["lab"]["mean_tokens"] == 2
    # the stop is what ended it: a model without the stop string goes on past <|im_end|>
    from l2smerge.eval.backends.base import Request
    from l2smerge.eval.backends.hf import HFBackend
    from l2smerge.eval.prompts import Prompt

    backend = HFBackend(str(model), device="cpu")
    text = PromptBuilder("qwen25-math-cot")(LAB[0]["question"]).text
    [(_, free)] = list(backend.generate([Request(("lab", 0), Prompt(text, None, ()))], 12))
    assert free.tokens == 12 and free.truncated


# -- run.json, identity, resume ---------------------------------------------------------------


def test_run_json_records_the_protocol_and_the_session(tiny, tmp_path, lab_data):
    evaluate(
        tiny,
        "lab",
        out_dir=tmp_path / "run",
        prompt="qwen25-math-cot",
        data_dir=lab_data,
        max_tokens=3,
        device="cpu",
        batch_size=2,
        progress=False,
        log_prompts=True,
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    identity = info["identity"]
    assert identity["model"]["fingerprint"].startswith("sha256:")
    assert identity["prompt"] == "qwen25-math-cot" and identity["max_tokens"] == 3
    assert identity["prompt_sha256"] == PromptBuilder("qwen25-math-cot").sha256
    assert identity["stop"] == list(TOOLKIT_STOP) and identity["grader_version"] == GRADER_VERSION
    assert info["prompt_template"] == QWEN25_MATH_COT
    [session] = info["sessions"]
    assert session["backend"] == "hf" and session["backend_args"]["batch_size"] == 2
    assert session["backend_args"]["device"] == "cpu" and session["items"] == 2
    assert session["stop_token_ids"] == [258] and session["context_length"] == 4096
    assert session["versions"]["transformers"] and session["versions"]["torch"]
    assert "T" in session["started"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode == 0 and session["git"] is not None:
        assert session["git"]["commit"] == head.stdout.decode().strip()
    prompts = [
        json.loads(x) for x in (tmp_path / "run" / "prompts.jsonl").read_text().split("\n") if x
    ]
    assert {p["id"] for p in prompts} == {0, 1}
    assert prompts[0]["prompt"] == QWEN25_MATH_COT.replace(
        "{question}", LAB[prompts[0]["id"]]["question"]
    )


def test_a_relative_path_naming_another_model_is_refused(tiny, tmp_path, lab_data, monkeypatch):
    from tiny import make_tiny_model

    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    shutil.copytree(tiny, here / "m")
    make_tiny_model(there / "m", seed=9, context=4096)  # another model, the same relative path
    opts = dict(
        out_dir=tmp_path / "run", data_dir=lab_data, max_tokens=2, device="cpu", progress=False
    )
    monkeypatch.chdir(here)
    evaluate("m", "lab", limit=1, **opts)
    monkeypatch.chdir(there)
    with pytest.raises(L2SError, match=r"another model or protocol \(model: fingerprint"):
        evaluate("m", "lab", **opts)
    # the same model by another path resumes the run (the second item only)
    summary = evaluate(str(tiny.resolve()), "lab", **opts)
    assert summary["benchmarks"]["lab"]["n"] == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["items"] for s in info["sessions"]] == [1, 1]
    # another protocol is refused too, naming what differs
    with pytest.raises(L2SError, match=r"max_tokens: 2 \(there\); 5 \(now\)"):
        evaluate(str(tiny), "lab", **{**opts, "max_tokens": 5})
    with pytest.raises(L2SError, match=r"prompt: chat \(there\); qwen25-math-cot \(now\)"):
        evaluate(str(tiny), "lab", prompt="cot", **opts)


def test_another_grader_version_is_refused_with_the_regrade_command(
    tmp_path, lab_data, monkeypatch
):
    replay = tmp_path / "r.jsonl"
    replay.write_text('{"bench": "lab", "id": 0, "response": "\\\\boxed{2}"}\n')
    opts = dict(
        out_dir=tmp_path / "run",
        backend="replay",
        responses=replay,
        data_dir=lab_data,
        progress=False,
    )
    evaluate("m", "lab", **opts)
    import l2smerge.eval.run as run_module

    newer = f"{GRADER_VERSION}-next"
    monkeypatch.setattr(run_module, "GRADER_VERSION", newer)
    differs = rf"grader_version: {GRADER_VERSION} \(there\); {newer} \(now\)"
    with pytest.raises(L2SError, match=differs + ".*--backend replay"):
        evaluate("m", "lab", **opts)


def test_a_failed_eval_locks_nothing(tiny, tmp_path, lab_data, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # so that f"{tmp_path.name}/nope" is under a folder
    out = tmp_path / "run"
    opts = dict(out_dir=out, data_dir=lab_data, max_tokens=2, progress=False)
    # a mistyped local path fails at once, before any hub lookup or write
    for typo in ("./no-such-model", str(tmp_path / "missing" / "m"), f"{tmp_path.name}/nope"):
        started = time.perf_counter()
        with pytest.raises(L2SError, match="no such directory"):
            evaluate(typo, "lab", **opts)
        assert time.perf_counter() - started < 1
    with pytest.raises(L2SError, match="--device"):
        evaluate(tiny, "lab", device="tpu", **opts)
    assert not (out / "run.json").exists() and not (out / "results.jsonl").exists()
    # a run.json without results (a server that failed at the first item) is replaced
    out.mkdir(exist_ok=True)
    (out / "run.json").write_text(json.dumps({"identity": {"model": {"hub": "typo"}}}))
    summary = evaluate(tiny, "lab", device="cpu", **opts)
    assert summary["benchmarks"]["lab"]["n"] == 2
    info = json.loads((out / "run.json").read_text())
    assert "fingerprint" in info["identity"]["model"] and len(info["sessions"]) == 1


def test_a_path_like_name_under_a_local_folder_is_a_path(tmp_path, lab_data, monkeypatch):
    from l2smerge.eval.identity import looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_like_path("models/sytem2")  # "models" is a local folder
    assert looks_like_path("a/b/c") and looks_like_path("../m") and looks_like_path("~/m")
    assert not looks_like_path("Qwen/Qwen2.5-Math-7B") and not looks_like_path("gpt2")
    with pytest.raises(L2SError, match="'models/sytem2': no such directory"):
        evaluate("models/sytem2", "lab", out_dir=tmp_path / "o", data_dir=lab_data)


def test_pickle_checkpoints_need_allow_pickle(tiny, tmp_path, lab_data):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny, pickled)
    weights = pickled / "model.safetensors"
    torch.save(load_file(weights), pickled / "pytorch_model.bin")
    weights.unlink()
    opts = dict(data_dir=lab_data, max_tokens=2, device="cpu", progress=False)
    with pytest.raises(L2SError, match=r"pickle weights \(\*\.bin\).*--allow-pickle"):
        evaluate(pickled, "lab", out_dir=tmp_path / "a", **opts)
    assert not (tmp_path / "a").exists()
    summary = evaluate(pickled, "lab", out_dir=tmp_path / "b", allow_pickle=True, **opts)
    assert summary["benchmarks"]["lab"]["n"] == 2


def test_a_checkpoint_missing_weights_is_refused(tiny, tmp_path, lab_data):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(L2SError, match=r"1 weight\(s\) missing .*model.norm.weight"):
        evaluate(
            broken, "lab", out_dir=tmp_path / "run", data_dir=lab_data, device="cpu", progress=False
        )
    assert not (tmp_path / "run" / "run.json").exists()


def test_replayed_token_counts_for_some_items_only_are_refused(tmp_path, lab_data):
    replay = tmp_path / "r.jsonl"
    replay.write_text(
        '{"bench": "lab", "id": 0, "response": "\\\\boxed{2}", "tokens": 5}\n'
        '{"bench": "lab", "id": 1, "response": "\\\\boxed{36}"}\n'
    )
    with pytest.raises(
        L2SError, match=r"1 of the 2 responses replayed have no \"tokens\" \(first: line 2\)"
    ):
        evaluate(
            "m",
            "lab",
            out_dir=tmp_path / "run",
            backend="replay",
            responses=replay,
            data_dir=lab_data,
            progress=False,
        )
    assert not (tmp_path / "run" / "results.jsonl").exists()
    # a run directory holding such lines (written by hand) loads; its length is said missing
    from run_fixtures import write_run

    from l2smerge.choose.report import write_report

    rows = [
        {"bench": "lab", "id": 0, "correct": 1, "tokens": 4},
        {"bench": "lab", "id": 1, "correct": 0, "tokens": None},
    ]
    report = write_report([write_run(tmp_path / "partial", rows)], tmp_path / "report")
    assert report["runs"][0]["average"]["tokens_missing"] == 1
    assert report["runs"][0]["average"]["mean_tokens"] is None


# -- compare, report and sweep across protocols ---------------------------------------------


def _run_with_protocol(path: Path, **protocol) -> Path:
    from run_fixtures import write_run

    rows = [{"bench": "math500", "id": i, "correct": i % 2, "tokens": 100 + i} for i in range(6)]
    write_run(path, rows)
    identity = {
        "model": {"hub": path.name},
        "prompt": "qwen25-math-cot",
        "prompt_sha256": "ab" * 32,
        "stop": list(TOOLKIT_STOP),
        "max_tokens": 10240,
        "grader_version": "1",
        **protocol,
    }
    (path / "run.json").write_text(json.dumps({"identity": identity, "sessions": []}))
    return path


def test_compare_and_report_say_loudly_when_protocols_differ(tmp_path):
    a = _run_with_protocol(tmp_path / "system2", prompt="chat", prompt_sha256="cd" * 32)
    b = _run_with_protocol(tmp_path / "merge")
    same = _run_with_protocol(tmp_path / "merge2")
    cmd = [sys.executable, "-m", "l2smerge"]
    done = subprocess.run(
        [*cmd, "compare", str(a), str(b), "-o", str(tmp_path / "c")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "warning: these runs were evaluated differently" in done.stderr
    assert "prompt: chat (system2); qwen25-math-cot (merge)" in done.stderr
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert result["protocol_differences"][0].startswith("prompt: chat (system2)")
    assert (tmp_path / "c" / "compare.md").read_text().startswith("> **Warning")
    quiet = subprocess.run(
        [*cmd, "compare", str(b), str(same), "-o", str(tmp_path / "c2")],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    report = subprocess.run(
        [*cmd, "report", str(a), str(b), str(same), "-o", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert "prompt: chat (system2); qwen25-math-cot (merge, merge2)" in report.stderr
    assert "evaluated differently" in (tmp_path / "r" / "report.md").read_text()


def test_protocol_differences_one_line_per_field():
    from types import SimpleNamespace

    from l2smerge.eval.identity import protocol_differences

    def run(label, **p):
        base = {
            "prompt": "qwen25-math-cot",
            "prompt_sha256": "a" * 64,
            "stop": ["</s>"],
            "max_tokens": 10240,
            "grader_version": "1",
        }
        return SimpleNamespace(label=label, protocol={**base, **p})

    assert protocol_differences(run("a"), run("b")) == []
    lines = protocol_differences(
        run("a"), run("b", max_tokens=8192, stop=["x"]), run("c", grader_version="2")
    )
    assert lines == [
        'stop: ["</s>"] (a, c); ["x"] (b)',
        "max_tokens: 10240 (a, c); 8192 (b)",
        "grader_version: 1 (a, b); 2 (c)",
    ]
    same_name = protocol_differences(run("a"), run("b", prompt_sha256="b" * 64))
    assert len(same_name) == 1 and same_name[0].startswith("prompt template (same name")
    unknown = SimpleNamespace(label="replayed", protocol=None)  # unknown is no difference
    assert protocol_differences(run("a"), unknown) == []


def test_sweep_refuses_to_select_across_prompts(tmp_path):
    from tiny import make_tiny_model

    from l2smerge.choose.sweep import run_sweep

    data = tmp_path / "data" / "math500"
    data.mkdir(parents=True)
    data.joinpath("test.jsonl").write_text(
        json.dumps({"problem": "What is 1+1?", "answer": "2", "level": 1}) + "\n"
    )
    base = make_tiny_model(tmp_path / "system1", seed=0, hidden=16, layers=1, context=4096)
    system2 = make_tiny_model(tmp_path / "system2", base=base, seed=1, noise=0.05)
    reference = tmp_path / "reference"
    evaluate(
        system2,
        "math500",
        out_dir=reference,
        prompt="chat",
        max_tokens=2,
        data_dir=tmp_path / "data",
        device="cpu",
        progress=False,
    )
    spec = {
        "base": str(base),
        "models": [str(base), str(system2)],
        "merge": {"dtype": "float32"},
        "points": [{"method": "task_arithmetic", "alpha": 0.5}],
        "eval": {
            "benches": ["math500"],
            "max_tokens": 2,
            "data_dir": str(tmp_path / "data"),
            "device": "cpu",
        },
        "reference": {"run": str(reference), "label": "system2"},
        "report": False,
    }
    with pytest.raises(L2SError, match=r"cannot select against the reference.*prompt: chat"):
        run_sweep(spec, tmp_path / "sweep", progress=False)
    assert not (tmp_path / "sweep").exists()  # refused before any point was merged


def test_auto_needs_one_prompt_for_the_run_but_a_replay_prompts_nothing(tmp_path, lab_data):
    math = lab_data / "math500"
    math.mkdir()
    (math / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(L2SError, match=r"different default prompts \(chat, qwen25-math-cot\)"):
        evaluate("m", "lab,math500", out_dir=tmp_path / "a", data_dir=lab_data)
    replay = tmp_path / "r.jsonl"
    replay.write_text(
        '{"bench": "lab", "id": 0, "response": "\\\\boxed{2}"}\n'
        '{"bench": "math500", "id": 0, "response": "\\\\boxed{2}"}\n'
    )
    summary = evaluate(
        "m",
        None,
        out_dir=tmp_path / "b",
        backend="replay",
        responses=replay,
        data_dir=lab_data,
        progress=False,
    )
    assert summary["average"]["accuracy"] == 1.0 and summary["prompt"] is None
