"""The executor's contract with method functions (methods/registry.py): float32 tensors in
model order, the base or None, resolved parameters, declared context, the prepare hook."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from merge_helpers import state
from tiny import make_tiny_model

from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge, tensor_generator
from l2smerge.methods import METHODS, WRAPPERS, MergeMethod, get_method, register, resolve_method
from l2smerge.methods.registry import Wrapper, register_wrapper
from l2smerge.util.errors import L2SError

CALLS: list[dict[str, Any]] = []
PREPARED: list[Any] = []


def _prepare(config, params, *, progress=True):
    PREPARED.append((config, params.uniform("alpha"), params.for_models("label"), progress))

    def per_tensor(name: str) -> dict[str, Any]:
        if name.endswith("q_proj.weight"):
            return {"importance": torch.full((3,), 0.5), "alpha": [0.25, 0.75]}
        return {}

    return per_tensor


def _probe(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    alpha: float | list[float] = 1.0,
    label: str = "x",
    tensor_name: str | None = None,
    generator: torch.Generator | None = None,
    importance: torch.Tensor | None = None,
) -> torch.Tensor:
    CALLS.append(
        dict(name=tensor_name, alpha=alpha, label=label, importance=importance,
             draw=torch.rand(4, generator=generator), dtypes={t.dtype for t in tensors},
             n=len(tensors), base=base)
    )  # fmt: skip
    return tensors[0].clone()


def _doubled(inner: MergeMethod, name: str) -> MergeMethod:
    """A wrapper for the test: twice the inner method's change, with its own `factor`."""

    def fn(tensors, base, *, factor: float = 2.0, **inner_kwargs):
        return base + factor * (inner.fn(tensors, base, **inner_kwargs) - base)

    return replace(
        inner, name=name, fn=fn, params={**inner.params, "factor": 2.0}, inner=inner.name
    )


@pytest.fixture(autouse=True)
def probe_method():
    """test_probe and the test_doubled wrapper are registered for this module's tests only:
    the registry is left as found."""
    before = dict(METHODS)
    register("test_probe", prepare=_prepare, per_model=("alpha", "label"))(_probe)
    register_wrapper(Wrapper("test_doubled", _doubled, default_inner="task_arithmetic"))
    yield
    for name in set(METHODS) - set(before):
        del METHODS[name]
    del WRAPPERS["test_doubled"]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    base = make_tiny_model(root / "base", seed=0, dtype=torch.bfloat16)
    return base, [make_tiny_model(root / f"m{i}", seed=i, base=base) for i in (1, 2)]


def test_executor_passes_tensors_params_context_and_prepare_overrides(trio, tmp_path):
    base, models = trio
    CALLS.clear()
    config = MergeConfig.build(
        method="test_probe", models=models, base=base, seed=11,
        parameters={"alpha": 0.5, "label": ["a", "b"]},
    )  # fmt: skip
    run_merge(config, tmp_path / "out", progress=False)
    prepared, alpha, labels, progress = PREPARED[-1]
    assert prepared.method == "test_probe" and alpha == 0.5 and labels == ["a", "b"]
    assert progress is False
    by_name = {c["name"]: c for c in CALLS}
    assert len(by_name) == len(CALLS)  # one call per tensor
    q = by_name["model.layers.0.self_attn.q_proj.weight"]
    assert q["alpha"] == [0.25, 0.75] and torch.equal(q["importance"], torch.full((3,), 0.5))
    up = by_name["model.layers.0.mlp.up_proj.weight"]
    assert up["alpha"] == 0.5 and up["importance"] is None and up["label"] == ["a", "b"]
    assert up["dtypes"] == {torch.float32} and up["n"] == 2 and up["base"].dtype == torch.float32
    # generator: seeded from a stable hash of (seed, tensor name)
    expected = torch.rand(4, generator=tensor_generator(11, "model.layers.0.mlp.up_proj.weight"))
    assert torch.equal(up["draw"], expected)
    assert not torch.equal(up["draw"], q["draw"])


def test_a_wrapper_exists_on_every_method_and_the_executor_knows_none(trio, tmp_path):
    base, models = trio
    # registered before the wrapper and after it (test_probe, then a method added now)
    assert {"test_doubled_ties", "test_doubled_test_probe", "test_doubled"} <= set(METHODS)
    assert get_method("test_doubled_ties").params == {**get_method("ties").params, "factor": 2.0}
    register("test_late", needs_base=False)(lambda tensors, base: tensors[0])
    assert get_method("test_doubled_test_late").inner == "test_late"
    assert resolve_method("test_doubled", "ties") is get_method("test_doubled_ties")
    # `--method W --on M` and `--method W_M` are the same merge; bare W wraps its default
    common = dict(models=models[:1], base=base, parameters={"alpha": 0.5, "factor": 3.0})
    outs = [
        run_merge(MergeConfig.build(**kw, **common), tmp_path / str(i), progress=False)
        for i, kw in enumerate([
            {"method": "test_doubled", "on": "task_arithmetic"},
            {"method": "test_doubled_task_arithmetic"},
            {"method": "test_doubled"},
        ])
    ]  # fmt: skip
    tensors = [state(o) for o in outs]
    b, m = state(base), state(models[0])
    name = "model.layers.0.mlp.up_proj.weight"
    expected = b[name].float() + 3.0 * 0.5 * (m[name].float() - b[name].float())
    assert torch.allclose(tensors[0][name].float(), expected, atol=1e-2)
    assert all(torch.equal(t[name], tensors[0][name]) for t in tensors[1:])
    with pytest.raises(L2SError, match="cannot wrap itself"):
        resolve_method("test_doubled", "test_doubled_ties")
    with pytest.raises(L2SError, match="does not wrap another method"):
        resolve_method("ties", "average")


def test_parameters_checked_against_the_declaration(trio, tmp_path):
    base, models = trio
    with pytest.raises(L2SError, match="has no parameter 'density'"):  # refused when built
        MergeConfig.build(
            method="test_probe", models=models, base=base, parameters={"density": 0.3}
        )
    config = MergeConfig(method="test_probe", models=models, base=base, parameters={"density": 0.3})
    with pytest.raises(L2SError, match="has no parameter 'density'"):  # and by the merge
        run_merge(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(L2SError, match="takes one factor for all models"):
        MergeConfig.build(
            method="test_doubled_test_probe", models=models, base=base,
            parameters={"factor": [1.0, 2.0]},
        )  # fmt: skip


def test_generator_seed_is_stable_across_processes():
    # zlib.crc32, not Python's salted hash(): a fixed value, the same in every process.
    assert torch.rand(1, generator=tensor_generator(0, "a.weight")).item() == pytest.approx(
        torch.rand(1, generator=tensor_generator(0, "a.weight")).item()
    )
    import zlib

    assert tensor_generator(3, "x").initial_seed() == zlib.crc32(b"3:x") + (3 << 32)
