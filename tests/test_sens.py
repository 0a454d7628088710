import time

import pytest
import torch
from calibration_fixtures import make_family, write_calibration
from safetensors.torch import load_file

from l2smerge import calibration as cal
from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge
from l2smerge.methods import get_method
from l2smerge.methods.sens import prepare_sens, sens
from l2smerge.util.errors import L2SError


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("sensfamily")
    base, kids = make_family(root, children=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2SMERGE_CACHE_DIR", str(root / "cache"))
        yield root, base, kids, write_calibration(root / "cal.jsonl")


def test_sens_is_task_arithmetic_with_per_model_coefficients():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g)
    tensors = [base + torch.randn(4, 3, generator=g) for _ in range(2)]
    out = sens(tensors, base, alpha=[0.9, 0.3])
    assert torch.allclose(out, base + 0.9 * (tensors[0] - base) + 0.3 * (tensors[1] - base))
    assert torch.allclose(sens(tensors, base, alpha=0.5), get_method("task_arithmetic").fn(
        tensors, base, alpha=0.5))  # fmt: skip
    assert get_method("sens").params["temperature"] == 2.0


def test_prepare_gives_positive_per_layer_coefficients(family):
    _, base, kids, calib = family
    config = MergeConfig.build(
        method="sens", models=kids, base=base, calibration=calib,
        parameters={"alpha": 0.7, "temperature": 2.0},
    )  # fmt: skip
    per_tensor = prepare_sens(config)
    q = per_tensor("model.layers.0.self_attn.q_proj.weight")["alpha"]
    norm = per_tensor("model.layers.0.input_layernorm.weight")["alpha"]
    other = per_tensor("model.layers.1.mlp.down_proj.weight")["alpha"]
    assert len(q) == 2 and all(c > 0 for c in q)
    assert q == norm  # one coefficient per (model, layer)
    assert q != other
    assert sum(q) == pytest.approx(2 * 0.7)  # the softmax shares 2α between the two models


def test_single_model_coefficients_average_alpha_and_flatten_with_temperature(family):
    _, base, kids, calib = family

    def coefficients(t):
        config = MergeConfig.build(
            method="sens", models=kids[:1], base=base, calibration=calib,
            parameters={"alpha": 0.4, "temperature": t},
        )  # fmt: skip
        per_tensor = prepare_sens(config)
        names = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                 "model.layers.1.mlp.up_proj.weight", "model.norm.weight",
                 "lm_head.weight"]  # fmt: skip
        return [per_tensor(n)["alpha"][0] for n in names]

    sharp, flat = coefficients(0.05), coefficients(50.0)
    assert sum(sharp) / 5 == pytest.approx(0.4) and sum(flat) / 5 == pytest.approx(0.4)
    assert max(sharp) - min(sharp) > max(flat) - min(flat)
    assert all(c > 0 for c in sharp + flat)


def test_merge_matches_the_formula_and_reuses_the_cache(family, monkeypatch, tmp_path):
    root, base, kids, calib = family
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = cal.task_sensitivity

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cal.sensitivity, "task_sensitivity", counting)
    seconds, outputs = [], []
    for preset in ("sens@7b", "sens@14b"):
        config = MergeConfig.build(preset=preset, models=kids, base=base, calibration=calib)
        out = root / preset
        start = time.perf_counter()
        run_merge(config, out, progress=False, force=True)
        seconds.append(time.perf_counter() - start)
        outputs.append(load_file(out / "model.safetensors"))
    # the sensitivities are computed once per model, in the first run only
    assert len(calls) == 2
    assert len(list((tmp_path / "cache").glob("sens-*.json"))) == 3
    print(f"sens merge: first {seconds[0]:.2f}s, second (cached) {seconds[1]:.2f}s")

    sensitivities, alignment = cal.sens_statistics(base, kids, calib, progress=False)
    coefs = cal.sens_coefficients(sensitivities, alignment, alpha=0.8, temperature=6.0)
    name = "model.layers.1.mlp.gate_proj.weight"
    b = load_file(base / "model.safetensors")[name]
    t = [load_file(k / "model.safetensors")[name] for k in kids]
    lam = [c["model.layers.1"] for c in coefs]
    expected = b + lam[0] * (t[0] - b) + lam[1] * (t[1] - b)
    assert torch.allclose(outputs[1][name], expected, atol=1e-6)
    assert not torch.equal(outputs[0][name], outputs[1][name])


def test_sens_refusals(family):
    root, base, kids, calib = family
    no_cal = MergeConfig.build(method="sens", models=kids, base=base)
    with pytest.raises(L2SError, match="--calibration"):
        run_merge(no_cal, root / "never", progress=False)
    per_model = MergeConfig.build(
        method="sens", models=kids, base=base, calibration=calib,
        parameters={"alpha": [0.5, 0.6]},
    )  # fmt: skip
    with pytest.raises(L2SError, match="per model"):
        prepare_sens(per_model)
    assert not (root / "never").exists()
