"""The executor's contract with method functions (methods/registry.py): float32 tensors in
model order, the base or None, resolved parameters, declared context, the prepare hook."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny import make_tiny_model

from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge, tensor_generator
from l2smerge.methods import METHODS, register
from l2smerge.util.errors import L2SError

CALLS: list[dict[str, Any]] = []
PREPARED: list[Any] = []


def _prepare(config):
    PREPARED.append(config)

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
    on: str = "task_arithmetic",
    tensor_name: str | None = None,
    generator: torch.Generator | None = None,
    importance: torch.Tensor | None = None,
    **inner: Any,
) -> torch.Tensor:
    CALLS.append(
        dict(name=tensor_name, alpha=alpha, on=on, inner=inner, importance=importance,
             draw=torch.rand(4, generator=generator), dtypes={t.dtype for t in tensors},
             n=len(tensors), base=base)
    )  # fmt: skip
    return tensors[0].clone()


@pytest.fixture(autouse=True)
def probe_method():
    """test_probe is registered for this module's tests only: the registry is left as found."""
    register("test_probe", prepare=_prepare)(_probe)
    yield
    del METHODS["test_probe"]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    base = make_tiny_model(root / "base", seed=0, dtype=torch.bfloat16)
    return base, [make_tiny_model(root / f"m{i}", seed=i, base=base) for i in (1, 2)]


def test_executor_passes_tensors_params_context_and_prepare_overrides(trio, tmp_path):
    base, models = trio
    CALLS.clear()
    config = MergeConfig.build(
        method="test_probe", models=models, base=base, on="ties",
        parameters={"alpha": 0.5, "density": 0.3}, seed=11,
    )  # fmt: skip
    run_merge(config, tmp_path / "out", progress=False)
    assert len(PREPARED) >= 1 and PREPARED[-1].method == "test_probe"
    by_name = {c["name"]: c for c in CALLS}
    assert len(by_name) == len(CALLS)  # one call per tensor
    q = by_name["model.layers.0.self_attn.q_proj.weight"]
    assert q["alpha"] == [0.25, 0.75] and torch.equal(q["importance"], torch.full((3,), 0.5))
    up = by_name["model.layers.0.mlp.up_proj.weight"]
    assert up["alpha"] == 0.5 and up["importance"] is None
    assert up["on"] == "ties" and up["inner"] == {"density": 0.3}
    assert up["dtypes"] == {torch.float32} and up["n"] == 2 and up["base"].dtype == torch.float32
    # generator: seeded from a stable hash of (seed, tensor name)
    expected = torch.rand(4, generator=tensor_generator(11, "model.layers.0.mlp.up_proj.weight"))
    assert torch.equal(up["draw"], expected)
    assert not torch.equal(up["draw"], q["draw"])


def test_inner_parameters_are_only_accepted_with_on(trio, tmp_path):
    base, models = trio
    with pytest.raises(L2SError, match="no parameter 'density'"):  # refused when built
        MergeConfig.build(
            method="test_probe", models=models, base=base, parameters={"density": 0.3}
        )
    config = MergeConfig(method="test_probe", models=models, base=base, parameters={"density": 0.3})
    with pytest.raises(L2SError, match="no parameter 'density'"):  # and by the merge
        run_merge(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_generator_seed_is_stable_across_processes():
    # zlib.crc32, not Python's salted hash(): a fixed value, the same in every process.
    assert torch.rand(1, generator=tensor_generator(0, "a.weight")).item() == pytest.approx(
        torch.rand(1, generator=tensor_generator(0, "a.weight")).item()
    )
    import zlib

    assert tensor_generator(3, "x").initial_seed() == zlib.crc32(b"3:x") + (3 << 32)
