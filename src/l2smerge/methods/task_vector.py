"""Task-vector merges (DESIGN.md): average, task arithmetic, TIES, DARE-TA, DARE-TIES.

Notation: base θ0, models θk, task vectors δk = θk − θ0, per-model weight αk.
Defaults are the study's 7B settings; docs/methods.md maps its k and p onto these options.
"""

from __future__ import annotations

import torch

from l2smerge.methods.registry import register
from l2smerge.methods.sparsify import (
    disjoint_mean,
    drop_random,
    elect_sign,
    per_model,
    trim_by_magnitude,
)


def _weighted_sum(base: torch.Tensor, deltas: list[torch.Tensor], alphas: list[float]):
    merged = base.clone()
    for delta, alpha in zip(deltas, alphas, strict=True):
        merged.add_(delta, alpha=alpha)
    return merged


def _consensus(base: torch.Tensor, deltas: list[torch.Tensor], alphas: list[float]):
    """θ0 + disjoint mean of the αk-scaled deltas around their elected sign."""
    scaled = [d.mul_(a) for d, a in zip(deltas, alphas, strict=True)]
    sign = elect_sign(scaled)
    return disjoint_mean(scaled, sign).add_(base)


@register("average", needs_base=False)
def average(tensors: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """Plain mean of the models' weights (the base is not counted unless listed as a model)."""
    merged = tensors[0].clone()
    for t in tensors[1:]:
        merged.add_(t)
    return merged.div_(len(tensors))


@register("task_arithmetic")
def task_arithmetic(
    tensors: list[torch.Tensor], base: torch.Tensor, *, alpha: float | list[float] = 0.7
) -> torch.Tensor:
    """Task arithmetic: θ0 + Σ αk·δk."""
    alphas = per_model(alpha, len(tensors), "alpha")
    merged = base.clone()
    for t, a in zip(tensors, alphas, strict=True):
        merged.add_(t - base, alpha=a)
    return merged


@register("ties")
def ties(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 1.0,
    density: float | list[float] = 0.2,
) -> torch.Tensor:
    """TIES: trim each δk to its top-density magnitudes, elect signs, add α·disjoint mean."""
    alphas = per_model(alpha, len(tensors), "alpha")
    densities = per_model(density, len(tensors), "density")
    deltas = []
    for t, d in zip(tensors, densities, strict=True):
        delta = t - base
        deltas.append(trim_by_magnitude(delta, d))
        del delta
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
    deltas = [drop_random(t - base, p, generator) for t, p in zip(tensors, rates, strict=True)]
    return _weighted_sum(base, deltas, alphas)


@register("dare_ties")
def dare_ties(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 1.0,
    drop_rate: float | list[float] = 0.3,
    density: float | list[float] = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE-TIES: DARE on each δk (then optional magnitude trim), elect signs, disjoint mean."""
    alphas = per_model(alpha, len(tensors), "alpha")
    rates = per_model(drop_rate, len(tensors), "drop_rate")
    densities = per_model(density, len(tensors), "density")
    deltas = []
    for t, p, d in zip(tensors, rates, densities, strict=True):
        delta = drop_random(t - base, p, generator)
        deltas.append(trim_by_magnitude(delta, d) if d < 1.0 else delta)
    return _consensus(base, deltas, alphas)
