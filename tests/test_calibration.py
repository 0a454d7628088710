import json
import shutil

import pytest
import torch
from calibration_fixtures import make_family, write_calibration

from l2smerge import calibration as cal
from l2smerge.util.errors import L2SError


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("calfamily")
    base, kids = make_family(root)
    return base, kids, write_calibration(root / "cal.jsonl")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- the calibration file ----------------------------------------------------------------------


def test_read_calibration_keeps_the_chosen_fields(tmp_path):
    path = write_calibration(tmp_path / "c.jsonl", [("Q1", "S1", "L1"), ("Q2", "S2", "L2")])
    assert cal.read_calibration(path, ("question", "short_answer")) == [
        {"question": "Q1", "short_answer": "S1"},
        {"question": "Q2", "short_answer": "S2"},
    ]
    samples = cal.read_calibration(path, cal.METHOD_FIELDS["sens"])
    assert samples[1] == {"question": "Q2", "short_answer": "S2", "long_answer": "L2"}


def test_a_sample_is_rendered_as_the_eval_prompt_plus_the_answers():
    from tiny import byte_tokenizer

    from l2smerge.eval.prompts import PromptBuilder

    tokenizer = byte_tokenizer()
    sample = {"question": "What is 2+2?", "short_answer": "4", "long_answer": "2+2=4. So 4."}
    text = cal.render_sample(sample, tokenizer)
    prompt = PromptBuilder("qwen25-math-cot")("What is 2+2?").text  # what eval sends
    assert text == prompt + "4\n\n2+2=4. So 4."
    assert prompt.startswith("<|im_start|>system\nPlease reason step by step")
    tokenizer.chat_template = "{{ messages[-1]['content'] }}"  # the template plays no part
    assert cal.render_sample(sample, tokenizer) == text
    assert cal.render_sample({"long_answer": "Just this."}, tokenizer) == "Just this."


def test_method_default_fields_and_parsing():
    assert cal.parse_fields(None, "aim") == ("question", "short_answer")
    assert cal.parse_fields(None, "sens") == ("question", "short_answer", "long_answer")
    assert cal.parse_fields("question, long_answer", "aim") == ("question", "long_answer")
    with pytest.raises(L2SError, match="answer_text"):
        cal.parse_fields("question,answer_text", "aim")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question": "q", "short_answer": "s"}\n{"question": "q"\n',
            r"c\.jsonl:2: not valid JSON",
        ),
        ('{"question": "q", "short_answer": "s"}\n[1, 2]\n', r"c\.jsonl:2: expected a JSON object"),
        ('\n{"question": "q", "short_answer": 3}\n', r"c\.jsonl:2: field 'short_answer'"),
        ('{"question": "", "short_answer": "s"}\n', r"c\.jsonl:1: field 'question'"),
        ("\n\n", r"c\.jsonl: calibration file has no samples"),
    ],
)
def test_bad_calibration_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(L2SError, match=message):
        cal.read_calibration(path, ("question", "short_answer"))


def test_missing_calibration_file(tmp_path):
    with pytest.raises(L2SError, match="not found"):
        cal.read_calibration(tmp_path / "nope.jsonl", ("question",))


# -- fingerprints --------------------------------------------------------------------------------


def test_model_fingerprint_follows_content_not_path(family, tmp_path):
    base, kids, _ = family
    copy = shutil.copytree(base, tmp_path / "copy")
    assert cal.model_fingerprint(copy) == cal.model_fingerprint(base)
    assert cal.model_fingerprint(kids[0]) != cal.model_fingerprint(base)
    with pytest.raises(L2SError, match="config.json"):
        cal.model_fingerprint(tmp_path)


# -- AIM statistics ----------------------------------------------------------------------------


def test_streamed_importance_equals_whole_model_hooks(family):
    base, _, calib = family
    texts = cal.read_calibration(calib, cal.METHOD_FIELDS["aim"])
    streamed = cal.activation_importance(base, texts, progress=False)
    whole = cal.activation_importance(base, texts, stream=False, progress=False)
    assert streamed.keys() == whole.keys()
    for name in streamed:
        assert torch.allclose(streamed[name], whole[name], atol=1e-5), name


def test_streaming_matches_on_a_tied_llama(tmp_path):
    from tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "llama", arch="llama", tie=True, layers=3)
    texts = cal.read_calibration(write_calibration(tmp_path / "c.jsonl"), ("question",))
    streamed = cal.activation_importance(model, texts, progress=False)
    whole = cal.activation_importance(model, texts, stream=False, progress=False)
    assert len(streamed) == 3 * (7 + 2) + 2 and streamed.keys() == whole.keys()  # + norms, head
    assert all(torch.allclose(streamed[k], whole[k], atol=1e-5) for k in streamed)


def test_importance_covers_linears_norms_and_head_but_not_embeddings(family):
    base, _, calib = family
    texts = cal.read_calibration(calib, cal.METHOD_FIELDS["aim"])
    importance = cal.activation_importance(base, texts, progress=False)
    linear = {"q_proj": 32, "k_proj": 32, "v_proj": 32, "o_proj": 32}
    linear |= {"gate_proj": 32, "up_proj": 32, "down_proj": 64}
    linear |= {"input_layernorm": 32, "post_attention_layernorm": 32}
    attention = ("q_proj", "k_proj", "v_proj", "o_proj")
    expected = {
        f"model.layers.{i}.{'self_attn.' if p in attention else 'mlp.' if 'proj' in p else ''}{p}"
        for i in range(2)
        for p in linear
    }
    # as AIM's reference code: every module with a weight but the embeddings
    assert set(importance) == expected | {"model.norm", "lm_head"}
    for name, value in importance.items():
        assert value.shape == (linear.get(name.rsplit(".", 1)[-1], 32),)
        assert float(value.min()) >= 0 and float(value.max()) == pytest.approx(1.0)


def test_aim_cache_is_reused_and_keyed_by_data(family, cache_in_tmp, monkeypatch, tmp_path):
    base, _, calib = family
    calls = []
    real = cal.activation_importance

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cal.activations, "activation_importance", counting)
    first = cal.aim_importance(base, calib, progress=False)
    second = cal.aim_importance(base, calib, progress=False)
    assert len(calls) == 1
    assert len(list(cache_in_tmp.glob("aim-*.safetensors"))) == 1
    for name in first:
        assert torch.equal(first[name], second[name])
    # other data, other fields: new entries
    other = write_calibration(tmp_path / "other.jsonl", [("Why?", "Because.", "Long because.")])
    cal.aim_importance(base, other, progress=False)
    cal.aim_importance(base, calib, fields=("question",), progress=False)
    assert len(calls) == 3
    assert len(list(cache_in_tmp.glob("aim-*.safetensors"))) == 3


def test_damaged_cache_entry_is_recomputed(family, cache_in_tmp):
    base, _, calib = family
    first = cal.aim_importance(base, calib, progress=False)
    (entry,) = cache_in_tmp.glob("aim-*.safetensors")
    entry.write_bytes(b"garbage")
    again = cal.aim_importance(base, calib, progress=False)
    assert all(torch.equal(first[k], again[k]) for k in first)


# -- Sens statistics ---------------------------------------------------------------------------


def test_layer_group():
    assert cal.layer_group("model.layers.3.mlp.up_proj.weight") == "model.layers.3"
    assert cal.layer_group("model.layers.12.input_layernorm.weight") == "model.layers.12"
    assert cal.layer_group("model.embed_tokens.weight") == "model.embed_tokens"
    assert cal.layer_group("lm_head.weight") == "lm_head"


def test_task_sensitivity_is_zero_without_a_task_vector(family):
    base, kids, calib = family
    texts = cal.read_calibration(calib, cal.METHOD_FIELDS["sens"])[:2]
    none = cal.task_sensitivity(base, base, texts, progress=False)
    assert set(none) == {
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.norm",
        "lm_head",
    }
    assert all(v == 0.0 for v in none.values())
    some = cal.task_sensitivity(kids[0], base, texts, progress=False)
    assert all(v > 0 for v in some.values())


def test_cross_task_alignment(family):
    base, kids, calib = family
    texts = cal.read_calibration(calib, cal.METHOD_FIELDS["sens"])[:2]
    g = cal.cross_task_alignment([kids[0], kids[1]], [texts, texts], progress=False)
    assert g[0][0] == g[1][1] == 1.0
    assert 0 < g[0][1] < 1 and 0 < g[1][0] < 1
    same = cal.cross_task_alignment([kids[0], kids[0]], [texts, texts], progress=False)
    assert same[0][1] == pytest.approx(1.0)


def test_sens_statistics_cache(family, monkeypatch, cache_in_tmp):
    base, kids, calib = family
    calls = []
    real = cal.task_sensitivity

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cal.sensitivity, "task_sensitivity", counting)
    first = cal.sens_statistics(base, kids, calib, progress=False)
    second = cal.sens_statistics(base, kids, calib, progress=False)
    assert len(calls) == 2  # one per model, first run only
    assert first == second
    assert len(list(cache_in_tmp.glob("sens-*.json"))) == 3  # 2 sensitivities + alignment


# -- Sens coefficients ---------------------------------------------------------------------------

SENS_ONE = [{"a": 1.0, "b": 3.0, "c": 0.5}]
SENS_TWO = [{"a": 1.0, "b": 3.0, "c": 0.5}, {"a": 2.0, "b": 1.0, "c": 0.5}]
ALIGN = [[1.0, 0.9], [0.6, 1.0]]


def _by_formula_one(alpha, t):
    s = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    a = s / s.norm()
    return (alpha * 3 * torch.softmax(a / t, dim=0)).tolist()


def test_sens_coefficients_single_model_follow_the_formula():
    for t in (0.5, 2.0, 6.0):
        (coef,) = cal.sens_coefficients(SENS_ONE, None, alpha=0.7, temperature=t)
        assert list(coef.values()) == pytest.approx(_by_formula_one(0.7, t))
        assert all(v > 0 for v in coef.values())
        assert sum(coef.values()) / 3 == pytest.approx(0.7)  # coefficients average α
        assert coef["b"] > coef["a"] > coef["c"]  # more sensitive layer, larger coefficient


def test_sens_coefficients_two_models_follow_the_formula():
    coefs = cal.sens_coefficients(SENS_TWO, ALIGN, alpha=0.7, temperature=2.0)
    s = torch.tensor([[1.0, 3.0, 0.5], [2.0, 1.0, 0.5]], dtype=torch.float64)
    a = s / s.norm(dim=1, keepdim=True)
    t = torch.tensor([0.9, 0.6], dtype=torch.float64)
    t = t / t.sum()
    expected = 0.7 * 2 * torch.softmax(a * t[:, None] / 2.0, dim=0)
    for k in range(2):
        assert list(coefs[k].values()) == pytest.approx(expected[k].tolist())
    for layer in "abc":
        assert coefs[0][layer] > 0 and coefs[1][layer] > 0
        assert coefs[0][layer] + coefs[1][layer] == pytest.approx(2 * 0.7)


def test_temperature_flattens_the_coefficients():
    def spread(t, sens=SENS_ONE, align=None):
        coefs = cal.sens_coefficients(sens, align, alpha=0.7, temperature=t)
        values = [v for c in coefs for v in c.values()]
        return max(values) - min(values)

    assert spread(0.5) > spread(2.0) > spread(6.0) > spread(1e6) >= 0
    assert spread(1e6) == pytest.approx(0, abs=1e-6)  # T → ∞ is task arithmetic with α
    assert spread(0.5, SENS_TWO, ALIGN) > spread(6.0, SENS_TWO, ALIGN)
    with pytest.raises(L2SError, match="temperature"):
        cal.sens_coefficients(SENS_ONE, None, alpha=0.7, temperature=0)


def test_calibration_file_fingerprint_is_a_plain_sha256(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    import hashlib

    assert cal.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unwritable_cache_warns_and_still_returns(family, monkeypatch, tmp_path, capsys):
    base, _, calib = family
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(blocker / "cache"))
    importance = cal.aim_importance(base, calib, progress=False)
    assert importance and "cannot write the l2smerge cache" in capsys.readouterr().err
