"""Sens statistics streamed one part of the model at a time equal the whole-model path's."""

import pytest
import torch
from calibration_fixtures import QUESTIONS, write_calibration
from tiny import make_tiny_model

from l2smerge import calibration as cal
from l2smerge.calibration import models, sens_streamed
from l2smerge.util.errors import L2SError

# A text holding the padding token: its embedding row gets no gradient in the whole model.
ROWS = [*QUESTIONS[:2], ("Is <|endoftext|> padding?", "yes", "It pads <|endoftext|> batches.")]
FIELDS = ("question", "short_answer", "long_answer")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))


def _pair(root, arch, tie, dtype):
    base = make_tiny_model(root / "base", arch=arch, tie=tie, dtype=dtype, layers=3)
    kids = [
        make_tiny_model(root / f"kid{i}", base=base, seed=i + 3, noise=0.03 * (i + 1), dtype=dtype)
        for i in range(2)
    ]
    return base, kids


def _close(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for group in a:
        assert a[group] == pytest.approx(b[group], rel=2e-5), group


def _watch_loads(monkeypatch) -> list[int]:
    """After each part is loaded: how many parameters of the model hold real weights."""
    real_params: list[int] = []
    load = models.LayerStream.load

    def counting(self, module, prefix):
        load(self, module, prefix)
        real_params.append(sum(p.numel() for p in self.skeleton.parameters() if not p.is_meta))

    monkeypatch.setattr(models.LayerStream, "load", counting)
    return real_params


@pytest.mark.parametrize(
    ("arch", "tie", "dtype"),
    [("qwen2", False, torch.bfloat16), ("llama", True, torch.float32)],
)
def test_streamed_sensitivity_and_alignment_equal_the_whole_model(
    tmp_path, monkeypatch, arch, tie, dtype
):
    base, kids = _pair(tmp_path, arch, tie, dtype)
    samples = cal.read_calibration(write_calibration(tmp_path / "c.jsonl", ROWS), FIELDS)
    whole = cal.task_sensitivity(kids[0], base, samples, stream=False, progress=False)
    whole_g = cal.cross_task_alignment(kids, [samples, samples[:2]], stream=False, progress=False)
    assert any(v > 0 for v in whole.values())

    loads = _watch_loads(monkeypatch)
    monkeypatch.setattr(models, "load_full_model", None)  # the whole model is never loaded
    monkeypatch.setattr(cal.sensitivity, "load_full_model", None)
    # the output head in several blocks of 50 rows: labels and tied rows on block boundaries
    monkeypatch.setattr(models, "ROW_BLOCK_BYTES", 50 * 4 * 32)
    streamed = cal.task_sensitivity(kids[0], base, samples, progress=False)
    _close(streamed, whole)
    # one part at a time: never more real weights than the largest layer plus the norm
    stream = models.open_layer_stream(kids[0], "cpu", 1024)
    largest = max(sum(p.numel() for p in m.parameters()) for m in stream.layers)
    assert loads and max(loads) <= largest + stream.config.hidden_size

    streamed_g = cal.cross_task_alignment(kids, [samples, samples[:2]], progress=False)
    assert torch.allclose(torch.tensor(streamed_g), torch.tensor(whole_g), rtol=0, atol=1e-6)
    assert streamed_g[0][1] < 1 and streamed_g[1][0] < 1


def test_texts_in_several_chunks_give_the_same_numbers(tmp_path, monkeypatch):
    base, kids = _pair(tmp_path, "qwen2", False, torch.float32)
    samples = cal.read_calibration(write_calibration(tmp_path / "c.jsonl", ROWS), FIELDS[::2])
    one_chunk = cal.task_sensitivity(kids[1], base, samples, progress=False)
    monkeypatch.setattr(sens_streamed, "BOUNDARY_BUDGET_BYTES", 1)  # one text per chunk
    chunks = sens_streamed.sample_chunks(cal.tokenize(kids[1], samples, 1024), 4, 2)
    assert [len(c) for c in chunks] == [1] * len(samples)
    _close(cal.task_sensitivity(kids[1], base, samples, progress=False), one_chunk)


def test_other_architectures_fall_back_to_the_whole_model(tmp_path):
    from tiny import byte_tokenizer
    from transformers import AutoModelForCausalLM, GemmaConfig, MistralConfig

    # Gemma scales its embeddings inside the model's forward: streaming its parts would miss it
    config = GemmaConfig(vocab_size=272, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         pad_token_id=256)  # fmt: skip
    for name in ("base", "kid"):
        torch.manual_seed(len(name))
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        byte_tokenizer().save_pretrained(tmp_path / name)
    assert models.open_layer_stream(tmp_path / "kid", "cpu", 100) is None
    samples = cal.read_calibration(write_calibration(tmp_path / "c.jsonl"), ("question",))
    streamed = cal.task_sensitivity(tmp_path / "kid", tmp_path / "base", samples, progress=False)
    whole = cal.task_sensitivity(tmp_path / "kid", tmp_path / "base", samples, stream=False,
                                 progress=False)  # fmt: skip
    assert streamed == whole
    # AIM's streamed activations take the same fallback (they used to miss Gemma's scale)
    imp = cal.activation_importance(tmp_path / "kid", samples, progress=False)
    ref = cal.activation_importance(tmp_path / "kid", samples, stream=False, progress=False)
    assert all(torch.allclose(imp[k], ref[k]) for k in ref)
    # a sliding window narrower than the longest text: full attention is not what runs
    mistral = MistralConfig(sliding_window=16)
    assert not models.full_attention_only(mistral, 17) and models.full_attention_only(mistral, 16)
    assert models.full_attention_only(MistralConfig(sliding_window=None), 10**6)


def test_a_base_that_does_not_fit_is_named(tmp_path):
    base, kids = _pair(tmp_path, "qwen2", False, torch.float32)
    other = make_tiny_model(tmp_path / "wide", hidden=48, layers=3)
    samples = cal.read_calibration(write_calibration(tmp_path / "c.jsonl"), ("question",))
    with pytest.raises(L2SError, match=r"wide: tensor 'model.embed_tokens.weight' has shape"):
        cal.task_sensitivity(kids[0], other, samples, progress=False)
    shallow = make_tiny_model(tmp_path / "shallow", layers=2)
    with pytest.raises(L2SError, match=r"shallow: tensor 'model.layers.2.* is missing"):
        cal.task_sensitivity(kids[0], shallow, samples, progress=False)
