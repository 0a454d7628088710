import hashlib
import json
import time

import pytest
import torch
from calibration_fixtures import make_family, write_calibration
from safetensors.torch import load_file

from l2smerge import calibration as cal
from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge
from l2smerge.merge.parameters import parameters_of
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
    per_tensor = prepare_sens(config, parameters_of(config))
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
        per_tensor = prepare_sens(config, parameters_of(config))
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
    with pytest.raises(L2SError, match="per model"):
        MergeConfig.build(
            method="sens", models=kids, base=base, calibration=calib,
            parameters={"alpha": [0.5, 0.6]},
        )  # fmt: skip
    assert not (root / "never").exists()


# -- the study's setting: zero task vectors skipped, per-model calibration, float32 ----------


def test_a_zero_task_vector_is_skipped_before_any_gradient_pass(family, monkeypatch, tmp_path):
    root, base, kids, calib = family
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    # the base re-saved in shards: another fingerprint, the same weights (δ = 0)
    from tiny import make_tiny_model

    resaved = make_tiny_model(tmp_path / "resaved", base=base, noise=0.0, max_shard_size="20KB")
    backward_calls = []  # every gradient computation, whole-model or streamed
    real_backward, real_grad = torch.Tensor.backward, torch.autograd.grad

    def counting(self, *args, **kwargs):
        backward_calls.append(1)
        return real_backward(self, *args, **kwargs)

    def counting_grad(*args, **kwargs):
        backward_calls.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    config = MergeConfig.build(
        method="sens", models=[resaved, kids[0]], base=base, calibration=calib,
        parameters={"alpha": 0.7, "temperature": 2.0},
    )  # fmt: skip
    with pytest.warns(UserWarning, match="zero task vector"):
        per_tensor = prepare_sens(config, parameters_of(config))
    pair_calls = len(backward_calls)
    backward_calls.clear()
    samples = cal.read_calibration(calib, cal.METHOD_FIELDS["sens"])
    cal.task_sensitivity(kids[0], base, samples, progress=False)
    assert pair_calls == len(backward_calls) > 0  # the gradient passes of kids[0] alone
    single_config = MergeConfig.build(
        method="sens",
        models=[kids[0]],
        base=base,
        calibration=calib,
        parameters={"alpha": 0.7, "temperature": 2.0},
    )  # fmt: skip
    single = prepare_sens(single_config, parameters_of(single_config))
    for name in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"):
        zero, child = per_tensor(name)["alpha"]
        assert zero == 0.0
        assert child == pytest.approx(single(name)["alpha"][0])  # the single-task coefficients
    sensitivities, alignment = cal.sens_statistics(base, [resaved, kids[0]], calib, progress=False)
    assert all(v == 0 for v in sensitivities[0].values()) and alignment is None


def test_each_model_takes_its_own_calibration_file_and_fields(family, monkeypatch, tmp_path):
    root, base, kids, calib = family
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    long_only = write_calibration(tmp_path / "long.jsonl", [("Q?", "", "a long answer, wait, yes")])
    seen = []
    real = cal.task_sensitivity

    def recording(model, base_path, samples, **kwargs):
        seen.append((model.name, [tuple(s) for s in samples]))
        return real(model, base_path, samples, **kwargs)

    monkeypatch.setattr(cal.sensitivity, "task_sensitivity", recording)
    from l2smerge.cli.merge import per_model_values

    shared, own = per_model_values(
        "--calibration", [str(calib), f"{kids[1].name}={long_only}"], kids, is_file=True
    )
    assert shared == str(calib) and own == {1: str(long_only)}
    fields_shared, fields_own = per_model_values(
        "--calibration-fields", [f"{kids[1]}=question,long_answer"], kids, is_file=False
    )
    assert fields_shared is None and fields_own == {1: "question,long_answer"}
    config = MergeConfig.build(
        method="sens", models=kids, base=base, calibration=calib,
        model_calibration=[None, long_only],
        parameters={"calibration_fields": ["question,short_answer", "question,long_answer"]},
    )  # fmt: skip
    prepare_sens(config, parameters_of(config))
    assert seen == [
        (kids[0].name, [("question", "short_answer")] * 4),
        (kids[1].name, [("question", "long_answer")]),
    ]
    # the same recipe through YAML, paths relative to the file
    recipe = tmp_path / "sens.yaml"
    recipe.write_text(config.to_yaml())
    again = MergeConfig.from_yaml(recipe)
    assert again.models[1].calibration == long_only.resolve()
    assert again.models[0].parameters == {"calibration_fields": "question,short_answer"}
    with pytest.raises(L2SError, match="not one of the --model inputs"):
        per_model_values("--calibration", ["nomodel=x.jsonl"], kids, is_file=True)


def test_sens_merges_are_float32_unless_dtype_is_given(family, tmp_path):
    root, base, kids, calib = family
    from tiny import make_tiny_model

    b16 = make_tiny_model(tmp_path / "b16", base=base, noise=0.0, dtype=torch.bfloat16)
    k16 = make_tiny_model(tmp_path / "k16", base=base, noise=0.05, seed=5, dtype=torch.bfloat16)
    common = dict(method="sens", models=[k16], base=b16, calibration=calib)
    run_merge(MergeConfig.build(**common), tmp_path / "f32", progress=False)
    assert load_file(tmp_path / "f32" / "model.safetensors")["lm_head.weight"].dtype == (
        torch.float32
    )
    run_merge(MergeConfig.build(dtype="bfloat16", **common), tmp_path / "bf", progress=False)
    assert load_file(tmp_path / "bf" / "model.safetensors")["lm_head.weight"].dtype == (
        torch.bfloat16
    )


def test_cli_takes_per_model_calibration(family, tmp_path, monkeypatch, capsys):
    import sys

    import yaml

    from l2smerge.cli import main

    root, base, kids, calib = family
    long_only = write_calibration(tmp_path / "long.jsonl", [("Q?", "", "a long answer, wait, yes")])
    out = tmp_path / "out"
    args = ["merge", "--base", str(base), "--model", str(kids[0]), "--model", str(kids[1]),
            "--method", "sens", "--calibration", str(calib),
            "--calibration", f"{kids[1].name}={long_only}",
            "--calibration-fields", f"{kids[1]}=question,long_answer",
            "--no-progress", "-o", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["l2smerge", *args])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    recipe = yaml.safe_load((out / "merge.yaml").read_text())
    assert recipe["calibration"] == str(calib)
    assert recipe["models"][0] == str(kids[0])
    assert recipe["models"][1] == {
        "path": str(kids[1]),
        "parameters": {"calibration_fields": "question,long_answer"},
        "calibration": str(long_only),
    }
    record = json.loads((out / "l2smerge.json").read_text())
    digest = hashlib.sha256(long_only.read_bytes()).hexdigest()
    assert record["per_model_calibration"] == [None, {"path": str(long_only), "sha256": digest}]
