"""Adding a method is one module in methods/ (docs/methods.md, "Adding a method"): a module is
written here, discovered, and merged with from the CLI, a YAML config and a sweep; no other
file (CLI options, ranges, the model card's papers) is touched."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from merge_helpers import cli, state
from tiny import make_tiny_model

from l2smerge.choose.sweep import run_sweep
from l2smerge.methods import METHODS, WRAPPERS
from l2smerge.util.errors import L2SError

MODULE = '''
"""Scaled task arithmetic, θ0 + strength · Σ δk: a method added by a test."""

import torch

from l2smerge.methods.registry import Paper, Range, register


@register(
    "scaled_sum",
    ranges={"strength": Range(0.0, 2.0)},
    per_model=("strength",),
    papers=(Paper("A. Tester 2026, Scaled sums", "https://example.org/scaled-sums"),),
)
def scaled_sum(tensors, base, *, strength: float | list[float] = 1.0):
    """θ0 + strength · Σ δk."""
    strengths = strength if isinstance(strength, list) else [strength] * len(tensors)
    merged = base.clone()
    for t, s in zip(tensors, strengths, strict=True):
        merged.add_(t - base, alpha=float(s))
    return merged
'''

NAME = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("added")
    base = make_tiny_model(root / "s1", seed=0, hidden=16, layers=1)
    return base, make_tiny_model(root / "s2", base=base, seed=1, noise=0.05)


@pytest.fixture
def scaled_sum(tmp_path, monkeypatch):
    """The module above, written in a folder of the methods package and discovered."""
    import l2smerge.methods as methods

    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "scaled_sum.py").write_text(MODULE)
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    before = dict(METHODS)
    methods.discover()
    yield
    for name in set(METHODS) - set(before):
        del METHODS[name]
    sys.modules.pop("l2smerge.methods.scaled_sum", None)


def _expected(pair, strength: float) -> torch.Tensor:
    b, m = (state(p)[NAME].float() for p in pair)
    return b + strength * (m - b)


def test_a_new_module_merges_from_the_cli_and_a_yaml_config(
    scaled_sum, pair, tmp_path, monkeypatch, capsys
):
    base, model = pair
    assert {"scaled_sum", "aim_scaled_sum"} <= set(METHODS) and "aim" in WRAPPERS
    args = [
        "merge",
        "--base",
        base,
        "--model",
        model,
        "--method",
        "scaled_sum",
        "--dtype",
        "float32",
    ]
    code, err = cli(monkeypatch, capsys, *args, "--param", "strength=0.5", "-o", tmp_path / "cli")
    assert code == 0, err
    assert torch.allclose(state(tmp_path / "cli")[NAME], _expected(pair, 0.5), atol=1e-6)
    card = (tmp_path / "cli" / "README.md").read_text()
    assert "[A. Tester 2026, Scaled sums](https://example.org/scaled-sums)" in card
    # its declared range, checked before anything is read
    code, err = cli(monkeypatch, capsys, *args, "--param", "strength=3", "-o", tmp_path / "bad")
    assert code == 2 and "strength = 3 is outside [0.0, 2.0]" in err
    assert not (tmp_path / "bad").exists()
    # the same merge from YAML (the saved recipe), and a depth schedule
    code, err = cli(
        monkeypatch, capsys, "merge", tmp_path / "cli" / "merge.yaml", "-o", tmp_path / "again"
    )
    assert code == 0, err
    assert torch.equal(state(tmp_path / "again")[NAME], state(tmp_path / "cli")[NAME])
    recipe = tmp_path / "depth.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "scaled_sum", "base": str(base), "models": [str(model)], "dtype": "float32",
        "parameters": {"strength": {"*mlp*": 1.5, "*": 0.0}},
    }, sort_keys=False))  # fmt: skip
    code, err = cli(monkeypatch, capsys, "merge", recipe, "-o", tmp_path / "rules")
    assert code == 0, err
    assert torch.allclose(state(tmp_path / "rules")[NAME], _expected(pair, 1.5), atol=1e-6)


def test_a_new_module_in_a_sweep_checked_before_anything_runs(scaled_sum, pair, data_dir, tmp_path):
    base, model = pair
    spec = {
        "base": str(base),
        "models": [str(model)],
        "merge": {"dtype": "float32"},
        "grid": [{"method": "scaled_sum", "strength": [0.5, 5.0]}],
        "eval": {"benches": ["gsm8k"], "data_dir": str(data_dir), "limit": 1, "max_tokens": 4},
        "reference": {"model": str(model), "label": "system2"},
        "report": False,
    }
    with pytest.raises(L2SError, match=r"grid\[0\]: strength = 5.0 is outside \[0.0, 2.0\]"):
        run_sweep(spec, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # nothing evaluated, not even the reference
    spec["grid"] = [{"method": "scaled_sum", "strength": [0.5]}]
    result = run_sweep(spec, tmp_path / "s", progress=False)
    [record] = result["points"]
    assert record["method"] == "scaled_sum" and record["parameters"] == {"strength": 0.5}
    recorded = json.loads((tmp_path / "s" / "points" / record["id"] / "l2smerge.json").read_text())
    assert recorded["parameters"] == {"strength": 0.5}


def test_a_broken_method_module_fails_loudly_naming_it(tmp_path, monkeypatch):
    import l2smerge.methods as methods

    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "broken_method.py").write_text("import no_such_package_here\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    try:
        with pytest.raises(ImportError, match="l2smerge.methods.broken_method: .*no_such_package"):
            methods.discover()
    finally:
        sys.modules.pop("l2smerge.methods.broken_method", None)
