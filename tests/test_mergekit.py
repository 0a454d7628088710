"""mergekit recipes through `l2smerge merge`: mergekit's example styles (README, examples/*.yml)
written in its format, merged on tiny checkpoints, and compared with results computed here
from mergekit's formulas (0.1.5: config.evaluate_setting, plan.py, linear.py,
generalized_task_arithmetic.py, sparsify.py)."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import yaml
from merge_helpers import state
from tiny import make_tiny_model

from l2smerge.cli import main
from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge

LAYERS = 3


def run_cli(monkeypatch, capsys, *args):
    """The real `l2smerge` entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["l2smerge", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A float32 base with three children, and a bfloat16 set (its task vectors tie at the
    TIES threshold, which exercises mergekit's tie-breaking)."""
    root = tmp_path_factory.mktemp("mk")
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        tag = "bf16" if dtype == torch.bfloat16 else "f32"
        base = make_tiny_model(root / f"{tag}-base", seed=0, layers=LAYERS, dtype=dtype)
        out[tag] = {"base": str(base)}
        for i, name in enumerate("abc"):
            child = make_tiny_model(
                root / f"{tag}-{name}", seed=i + 1, base=base, noise=0.05, dtype=dtype
            )
            out[tag][name] = str(child)
    return out


# -- mergekit's semantics, computed directly ---------------------------------------------------


def t_of(name: str) -> float:
    """mergekit's gradient position: layer i of L at i/(L-1); outside the layers 0."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    if m is None:
        return 0.0
    return int(m.group(1)) / (LAYERS - 1) if LAYERS > 1 else 1.0


def evaluate(setting, name: str, t: float):
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if all(isinstance(e, (int, float)) for e in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for rule in setting:
        if rule.get("filter") in (None, "*") or rule["filter"] in name:
            return evaluate(rule["value"], name, t)
    return None


def parameter(recipe, key, name, entry=None, default=None):
    t = t_of(name)
    scopes = ([entry.get("parameters") or {}] if entry is not None else []) + [
        recipe.get("parameters") or {}
    ]
    for scope in scopes:
        if key in scope:
            value = evaluate(scope[key], name, t)
            if value is not None:
                return value
    return default


def magnitude(delta, density, rescale):
    """mergekit's sparsify.magnitude (0.1.5)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel())
    mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
    masked = delta * mask.reshape(delta.shape)
    before, after = delta.abs().sum(), masked.abs().sum()
    if rescale and before >= 1e-7 and after >= 1e-7:
        return masked * (before / after)
    return masked


def mergekit_result(recipe) -> dict[str, torch.Tensor]:
    """What mergekit computes for `recipe` (float32 compute), tensor by tensor."""
    method = recipe["merge_method"]
    entries = recipe["models"]
    tensors = [state_f32(e["model"]) for e in entries]
    out = {}
    if method == "linear":
        for name in tensors[0]:
            w = [parameter(recipe, "weight", name, e) for e in entries]
            total = sum(wi * t[name] for wi, t in zip(w, tensors, strict=True))
            normalize = parameter(recipe, "normalize", name, default=True)
            out[name] = total / torch.tensor(w).sum() if normalize else total
        return out
    base = state_f32(recipe["base_model"])
    consensus = method == "ties"
    for name, theta0 in base.items():
        normalize = parameter(recipe, "normalize", name, default=method == "ties")
        rescale = parameter(recipe, "rescale", name, default=False)
        lam = parameter(recipe, "lambda", name, default=1.0)
        deltas, weights = [], []
        for e, t in zip(entries, tensors, strict=True):
            delta = t[name] - theta0
            if method == "ties":
                delta = magnitude(delta, parameter(recipe, "density", name, e, 1.0), rescale)
            w = parameter(recipe, "weight", name, e)
            deltas.append(delta * w)
            weights.append(w)
        stacked = torch.stack(deltas)
        w = torch.tensor(weights).reshape(-1, *[1] * theta0.ndim)
        if consensus:
            majority = (stacked.sum(0) >= 0).float() * 2 - 1
            mask = stacked.sign() == majority
            mixed = (stacked * mask).sum(0)
            divisor = (w * mask).sum(0)
            divisor[divisor == 0] = 1
        else:
            mixed = stacked.sum(0)
            divisor = w.sum(0).expand_as(mixed).clone()
            divisor[divisor.abs() < 1e-8] = 1
        if normalize:
            mixed = mixed / divisor
        out[name] = theta0 + lam * mixed
    return out


_STATES: dict[str, dict[str, torch.Tensor]] = {}


def state_f32(path: str) -> dict[str, torch.Tensor]:
    from pathlib import Path

    if path not in _STATES:
        _STATES[path] = {k: v.float() for k, v in state(Path(path)).items()}
    return _STATES[path]


def merge_recipe(tmp_path, monkeypatch, capsys, recipe, name="out"):
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    code, out, err = run_cli(monkeypatch, capsys, "merge", path, "-o", tmp_path / name)
    assert code == 0, err
    return state(tmp_path / name), out


def assert_same(got, expected, atol=2e-7):
    assert set(got) == set(expected)
    for name in expected:
        diff = (got[name].float() - expected[name]).abs().max().item()
        assert diff <= atol, f"{name}: max |diff| {diff}"


F32 = {"dtype": "float32", "out_dtype": "float32"}


# -- the methods we share ----------------------------------------------------------------------


def test_linear_recipe_is_the_weighted_mean(models, tmp_path, monkeypatch, capsys):
    m = models["f32"]
    recipe = {  # examples/linear.yml
        "models": [
            {"model": m["a"], "parameters": {"weight": 1.0}},
            {"model": m["b"], "parameters": {"weight": 0.3}},
            {"model": m["c"], "parameters": {"weight": 0.5}},
        ],
        "merge_method": "linear",
        **F32,
    }
    got, printed = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert_same(got, mergekit_result(recipe))
    assert "a mergekit recipe, read as this l2smerge recipe" in printed
    assert "method: average" in printed
    recipe["parameters"] = {"normalize": False}
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe, "sum")
    assert_same(got, mergekit_result(recipe), atol=1e-6)


def test_task_arithmetic_weight_is_per_model_and_lambda_scales(
    models, tmp_path, monkeypatch, capsys
):
    m = models["f32"]
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": m["base"],
        "models": [
            {"model": m["a"], "parameters": {"weight": 0.7}},
            {"model": m["b"], "parameters": {"weight": [0.1, 0.9]}},
        ],
        "parameters": {"lambda": 0.6},
        **F32,
    }
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert_same(got, mergekit_result(recipe), atol=3e-7)
    recipe["parameters"]["normalize"] = True
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe, "normalised")
    assert_same(got, mergekit_result(recipe), atol=3e-7)


@pytest.mark.parametrize("storage", ["f32", "bf16"])
def test_ties_example_matches_mergekit_including_its_tie_breaking(
    models, tmp_path, monkeypatch, capsys, storage
):
    m = models[storage]
    recipe = {  # examples/ties.yml: density and weight gradients, a weight filter
        "models": [
            {"model": m["a"], "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
            {"model": m["b"], "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
            {
                "model": m["c"],
                "parameters": {
                    "density": 0.33,
                    "weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}],
                },
            },
        ],
        "merge_method": "ties",
        "base_model": m["base"],
        "parameters": {"normalize": True, "int8_mask": True},
        **F32,
    }
    got, printed = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert_same(got, mergekit_result(recipe))
    assert "tie_break: mergekit" in printed and "note: int8_mask" in printed


def test_ties_normalises_by_the_weights_so_a_uniform_weight_does_nothing(
    models, tmp_path, monkeypatch, capsys
):
    m = models["bf16"]

    def recipe(weight, **parameters):
        return {
            "merge_method": "ties",
            "base_model": m["base"],
            "models": [
                {"model": m["a"], "parameters": {"density": 0.4, "weight": weight}},
                {"model": m["b"], "parameters": {"density": 0.4, "weight": weight}},
            ],
            "parameters": parameters,
            **F32,
        }

    one, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe(1.0), "one")
    small, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe(0.3), "small")
    assert_same(small, {k: v.float() for k, v in one.items()}, atol=1e-6)
    half, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe(0.3, **{"lambda": 0.5}), "half")
    base = state_f32(m["base"])
    for name, theta0 in base.items():
        expected = theta0 + 0.5 * (one[name].float() - theta0)
        assert torch.allclose(half[name].float(), expected, atol=1e-6)
    # bio-merge.yml: normalize false sums the agreeing weighted task vectors
    summed = recipe(0.5, normalize=False, int8_mask=True)
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, summed, "summed")
    assert_same(got, mergekit_result(summed))


def test_ties_rescale_matches_each_tensors_l1_norm(models, tmp_path, monkeypatch, capsys):
    m = models["bf16"]
    recipe = {
        "merge_method": "ties",
        "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"density": 0.25, "weight": 1.0}}],
        "parameters": {"rescale": True},
        **F32,
    }
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert_same(got, mergekit_result(recipe), atol=1e-6)
    base, a = state_f32(m["base"]), state_f32(m["a"])
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"):
        merged_l1 = (got[name].float() - base[name]).abs().sum()
        assert torch.isclose(merged_l1, (a[name] - base[name]).abs().sum(), rtol=1e-5)


def test_gradient_gives_the_tensors_outside_the_layers_its_first_value(
    models, tmp_path, monkeypatch, capsys
):
    m = models["f32"]
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"weight": [0.2, 1.0]}}],
        **F32,
    }
    got, printed = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    base, a = state_f32(m["base"]), state_f32(m["a"])

    def weight_of(name):
        return float(((got[name] - base[name]) / (a[name] - base[name])).median())

    for name in ("lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"):
        assert weight_of(name) == pytest.approx(0.2, abs=1e-4), name
    assert weight_of("model.layers.1.mlp.up_proj.weight") == pytest.approx(0.6, abs=1e-4)
    assert weight_of("model.layers.2.mlp.up_proj.weight") == pytest.approx(1.0, abs=1e-4)
    assert "model.norm.weight: 0.2" in printed and "lm_head.weight: 0.2" in printed


def test_a_lone_layer_takes_the_gradients_last_value(tmp_path, monkeypatch, capsys):
    base = make_tiny_model(tmp_path / "base", seed=0, layers=1)
    child = make_tiny_model(tmp_path / "child", seed=1, base=base, noise=0.05)
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(child), "parameters": {"weight": [0.2, 1.0]}}],
        **F32,
    }
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    theta0, theta1 = state_f32(str(base)), state_f32(str(child))
    for name, expected in (("model.layers.0.mlp.up_proj.weight", 1.0), ("lm_head.weight", 0.2)):
        ratio = (got[name] - theta0[name]) / (theta1[name] - theta0[name])
        assert float(ratio.median()) == pytest.approx(expected, abs=1e-4), name


def test_filters_are_substrings_tried_in_order_then_the_top_level_value(
    models, tmp_path, monkeypatch, capsys
):
    m = models["f32"]
    recipe = {
        "merge_method": "ties",
        "base_model": m["base"],
        "models": [
            {
                "model": m["a"],
                "parameters": {
                    "weight": [
                        {"filter": "self_attn", "value": [0.2, 0.8]},
                        {"filter": "proj", "value": 0.1},  # mlp *_proj; self_attn taken above
                    ],  # no catch-all: the rest falls back to the top-level weight
                    "density": {"filter": "mlp", "value": 0.3},  # the rest: mergekit's 1.0
                },
            },
            {"model": m["b"], "parameters": {"weight": 0.5, "density": 0.6}},
        ],
        "parameters": {"weight": 0.9},
        **F32,
    }
    got, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert_same(got, mergekit_result(recipe))


def test_dare_density_is_the_keep_probability_and_rescale_keeps_the_l1_norm(
    models, tmp_path, monkeypatch, capsys
):
    m = models["f32"]
    recipe = {
        "merge_method": "dare_linear",
        "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"density": 0.7, "weight": 0.8}}],
        **F32,
    }
    got, printed = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert "drop_rate: 0.3" in printed and "rescale: l1" in printed
    base, a = state_f32(m["base"]), state_f32(m["a"])
    changed = total = 0
    for name, theta0 in base.items():
        delta = got[name].float() - theta0
        changed += int((delta != 0).sum())
        total += delta.numel()
        expected_l1 = 0.8 * (a[name] - theta0).abs().sum()
        assert torch.isclose(delta.abs().sum(), expected_l1, rtol=1e-5), name
    assert abs(changed / total - 0.7) < 0.01


def test_dare_ties_sums_unless_normalize(models, tmp_path, monkeypatch, capsys):
    m = models["f32"]

    def recipe(**parameters):  # density 1: no drop, so the result is deterministic
        return {
            "merge_method": "dare_ties",
            "base_model": m["base"],
            "models": [
                {"model": m["a"], "parameters": {"density": 1.0, "weight": 0.6}},
                {"model": m["b"], "parameters": {"density": 1.0, "weight": 0.4}},
            ],
            "parameters": parameters,
            **F32,
        }

    summed, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe(), "sum")
    as_ties = {**recipe(normalize=False), "merge_method": "ties"}
    assert_same(summed, mergekit_result(as_ties))
    mean, _ = merge_recipe(tmp_path, monkeypatch, capsys, recipe(normalize=True), "mean")
    assert_same(mean, mergekit_result({**as_ties, "parameters": {"normalize": True}}))


def test_a_note_says_where_mergekit_would_compute_in_lower_precision(
    models, tmp_path, monkeypatch, capsys
):
    m = models["bf16"]
    recipe = {  # no dtype: mergekit computes in the inputs' bfloat16, writes bfloat16
        "merge_method": "task_arithmetic",
        "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"weight": 0.5}}],
    }
    got, printed = merge_recipe(tmp_path, monkeypatch, capsys, recipe)
    assert "note: mergekit computes in bfloat16; l2smerge computes in float32" in printed
    assert got["lm_head.weight"].dtype == torch.bfloat16
    linear = {
        "merge_method": "linear",
        "models": [{"model": m["a"], "parameters": {"weight": 1.0}}],
        "dtype": "bfloat16",
    }
    _, printed = merge_recipe(tmp_path, monkeypatch, capsys, linear, "linear")
    assert "note:" not in printed  # linear sums in float32 in mergekit too


@pytest.mark.parametrize("rescale", ["l1", "none"])
def test_mergekit_ties_in_row_blocks_gives_the_same_bytes(models, tmp_path, monkeypatch, rescale):
    import l2smerge.merge.executor as executor
    import l2smerge.methods.sparsify as sparsify

    m = models["bf16"]
    config = MergeConfig.build(
        method="ties",
        base=m["base"],
        models=[m["a"], m["b"]],
        parameters={
            "density": [0.3, 0.45],
            "weight": [0.7, 0.4],
            "rescale": rescale,
            "tie_break": "mergekit",
        },
        dtype="float32",
    )
    whole = run_merge(config, tmp_path / "whole", progress=False)
    monkeypatch.setattr(executor, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(sparsify, "STREAMED_TRIM_BYTES", 0)  # sampled windows where they decide
    monkeypatch.setattr(sparsify, "MAX_SAMPLE_SHARE", 1.0)  # tiny tensors: few rows
    assert all(j.block_rows for j in executor.plan_merge(config).jobs if len(j.shape) == 2)
    blocks = run_merge(config, tmp_path / "blocks", progress=False)
    assert (blocks / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"merge_method": "slerp"}, "merge_method 'slerp' has no l2smerge equivalent"),
        ({"slices": [], "chat_template": "chatml"}, "slices (layer ranges"),
        ({"tokenizer_source": "union"}, "tokenizer_source: union"),
        ({"parameters": {"normalize": True, "epsilon": 0.1, "alpha": 2}}, "parameters.epsilon"),
        ({"models_extra": {"gamma": 0.01}}, "models[0].parameters.gamma"),
        ({"models_extra": {"lambda": 0.5}}, "models[0].parameters.lambda (mergekit reads"),
        ({"parameters": {"normalize": [True, False]}}, "a list of true/false"),
        ({"parameters": {"lambda": "lots"}}, "'lots' is not a number"),
        ({"models_extra": {"density": 1.5}}, "density = 1.5"),
        ({"models_weight": None}, "no weight (mergekit requires one"),
        ({"models_weight": [{"filter": "mlp", "value": 1}]}, "no weight for tensor"),
        ({"dtype": "float64"}, "dtype: 'float64'"),
        ({"models_path": "org/model+lora"}, "names a LoRA"),
    ],
)
def test_keys_it_cannot_honour_are_refused_in_one_line(
    models, tmp_path, monkeypatch, capsys, change, named
):
    m = models["f32"]
    recipe = {
        "merge_method": "ties",
        "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"weight": 1.0, "density": 0.5}}],
        "dtype": "float32",
    }
    entry = recipe["models"][0]
    for key, value in change.items():
        if key == "models_extra":
            entry["parameters"].update(value)
        elif key == "models_weight":
            if value is None:
                del entry["parameters"]["weight"]
            else:
                entry["parameters"]["weight"] = value
        elif key == "models_path":
            entry["model"] = value
        else:
            recipe[key] = value
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli(monkeypatch, capsys, "merge", path, "-o", tmp_path / "out")
    assert code == 2
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    if "chat_template" in change:  # every key it cannot honour, named in the same line
        assert "chat_template" in err


# -- l2smerge -> mergekit ----------------------------------------------------------------------


def test_to_mergekit_writes_a_recipe_that_reads_back_to_the_same_merge(
    models, tmp_path, monkeypatch, capsys
):
    m = models["bf16"]
    config = tmp_path / "ours.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "ties",
                "base": m["base"],
                "models": [m["a"], {"path": m["b"], "parameters": {"density": 0.5}}],
                "parameters": {
                    "alpha": 0.8,
                    "density": {"*mlp*": 0.3, "*": 0.25},
                    "weight": [0.5, 1.0],
                    "tie_break": "mergekit",
                },
                "dtype": "float32",
            },
            sort_keys=False,  # name rules: the first match wins
        )
    )
    written = tmp_path / "mk.yml"
    code, out, err = run_cli(monkeypatch, capsys, "merge", config, "--to-mergekit", written)
    assert code == 0, err
    recipe = yaml.safe_load(written.read_text())
    assert recipe["merge_method"] == "ties" and recipe["parameters"]["lambda"] == 0.8
    assert recipe["parameters"]["density"] == [
        {"filter": "mlp", "value": 0.3},
        {"value": 0.25},
    ]
    # the depth list: l2smerge gives the final norm and head depth 1, mergekit t = 0
    assert {"filter": "lm_head.weight", "value": 1.0} in recipe["parameters"]["weight"]
    assert not (tmp_path / "out").exists()
    ours = run_merge(MergeConfig.from_yaml(config), tmp_path / "ours", progress=False)
    code, _, err = run_cli(monkeypatch, capsys, "merge", written, "-o", tmp_path / "back")
    assert code == 0, err
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (
        ours / "model.safetensors"
    ).read_bytes()
    assert_same(state(tmp_path / "back"), mergekit_result(recipe))


@pytest.mark.parametrize(
    ("method", "extra", "named"),
    [
        ("lore", [], "no mergekit equivalent"),
        ("twin", [], "no mergekit equivalent"),
        ("aim_ties", [], "no mergekit equivalent"),
        ("sens", [], "no mergekit equivalent"),
        ("dare_ties", ["--density", "0.5"], "does not trim after DARE"),
    ],
)
def test_to_mergekit_says_when_mergekit_has_no_equivalent(
    models, tmp_path, monkeypatch, capsys, method, extra, named
):
    m = models["f32"]
    args = ["merge", "--base", m["base"], "--model", m["a"], "--method", method, *extra]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--to-mergekit", "-")
    assert code == 2 and named in err, err


def test_to_mergekit_notes_where_l2smerge_rules_differ(models, tmp_path, monkeypatch, capsys):
    m = models["f32"]
    args = ["merge", "--base", m["base"], "--model", m["a"], "--preset", "ties@7b"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--to-mergekit", "-")
    assert code == 0, err
    assert "# note: tie_break l2smerge" in out
    assert yaml.safe_load(out)["models"][0]["model"] == m["a"]
    assert json.loads(json.dumps(yaml.safe_load(out)))["parameters"]["density"] == 0.2
