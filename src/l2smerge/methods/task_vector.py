"""Task-vector merges (DESIGN.md): average, task arithmetic, TIES, DARE-TA, DARE-TIES.

Notation: base θ0, models θk, task vectors δk = θk − θ0, per-model weight αk.
Defaults are the study's 7B settings; docs/methods.md maps its k and p onto these options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from l2smerge.methods.registry import register
from l2smerge.methods.sparsify import (
    disjoint_mean_,
    drop_random_,
    elect_sign,
    keep_at_least_,
    magnitude_thresholds,
    per_model,
    trim_by_magnitude_,
)
from l2smerge.util.errors import warn

# Every method is pure (its inputs are left untouched) but works in place on the task
# vectors it creates itself: for a 7B model's embedding each float32 copy is ~2 GB.


def _consensus(base: torch.Tensor, deltas: list[torch.Tensor], alphas: list[float]):
    """θ0 + disjoint mean of the αk-scaled deltas around their elected sign (consumes deltas)."""
    scaled = [d.mul_(a) for d, a in zip(deltas, alphas, strict=True)]
    if len(scaled) == 1:  # a lone task vector agrees with its own signs everywhere
        return scaled[0].add_(base)
    return disjoint_mean_(scaled, elect_sign(scaled)).add_(base)


def _warn_single_model(config) -> Callable[[str], dict[str, Any]]:
    if len(config.models) == 1:
        warn("average of one --model returns that model unchanged (list System 1 and System 2)")
    return lambda _tensor_name: {}


@register("average", needs_base=False, elementwise=True, linear=True, prepare=_warn_single_model)
def average(tensors: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """Plain mean of the models' weights (the base is not counted unless listed as a model)."""
    merged = tensors[0].clone()
    for t in tensors[1:]:
        merged.add_(t)
    return merged.div_(len(tensors))


@register("task_arithmetic", elementwise=True, linear=True)
def task_arithmetic(
    tensors: list[torch.Tensor], base: torch.Tensor, *, alpha: float | list[float] = 0.7
) -> torch.Tensor:
    """Task arithmetic: θ0 + Σ αk·δk."""
    alphas = per_model(alpha, len(tensors), "alpha")
    # θ0 + Σ αk(θk − θ0) = (1 − Σ αk)·θ0 + Σ αk·θk: no task vector is materialised.
    merged = base * (1.0 - sum(alphas))
    for t, a in zip(tensors, alphas, strict=True):
        merged.add_(t, alpha=a)
    return merged


def _ties_thresholds(
    task_vector_blocks, n_models: int, numel: int, *, density=0.2, **_: object
) -> dict[str, list[float]]:
    """First pass of a blockwise TIES: each model's magnitude threshold over the whole tensor."""
    densities = per_model(density, n_models, "density")
    return {"thresholds": magnitude_thresholds(task_vector_blocks, n_models, numel, densities)}


@register("ties", block_stats=_ties_thresholds)
def ties(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 1.0,
    density: float | list[float] = 0.2,
    thresholds: list[float] | None = None,
) -> torch.Tensor:
    """TIES: trim each δk to its top-density magnitudes, elect signs, add α·disjoint mean.

    With `thresholds` (the executor's first pass over a large tensor), `tensors` and `base`
    are a block of rows and each δk is trimmed at its whole-tensor threshold: the same result
    as trimming the whole tensor, in a few blocks' memory."""
    alphas = per_model(alpha, len(tensors), "alpha")
    if thresholds is not None:
        deltas = [keep_at_least_(t - base, c) for t, c in zip(tensors, thresholds, strict=True)]
    else:
        densities = per_model(density, len(tensors), "density")
        deltas = [trim_by_magnitude_(t - base, d) for t, d in zip(tensors, densities, strict=True)]
    return _consensus(base, deltas, alphas)


@register("dare_ta")
def dare_ta(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 0.7,
    drop_rate: float | list[float] = 0.3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE-TA: drop each δk entry with probability p, rescale by 1/(1−p), then θ0 + Σ αk·δk."""
    alphas = per_model(alpha, len(tensors), "alpha")
    rates = per_model(drop_rate, len(tensors), "drop_rate")
    merged = base.clone()
    for t, a, p in zip(tensors, alphas, rates, strict=True):
        merged.add_(drop_random_(t - base, p, generator), alpha=a)
    return merged


@register("dare_ties")
def dare_ties(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 1.0,
    drop_rate: float | list[float] = 0.3,
    density: float | list[float] = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE-TIES: DARE on each δk, then TIES (trim to density, elect signs, disjoint mean)."""
    alphas = per_model(alpha, len(tensors), "alpha")
    rates = per_model(drop_rate, len(tensors), "drop_rate")
    densities = per_model(density, len(tensors), "density")
    deltas = []
    for t, p, d in zip(tensors, rates, densities, strict=True):
        deltas.append(trim_by_magnitude_(drop_random_(t - base, p, generator), d))
    return _consensus(base, deltas, alphas)
