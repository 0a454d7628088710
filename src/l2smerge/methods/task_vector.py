"""Task-vector merges (DESIGN.md): average, task arithmetic, TIES, DARE-TA, DARE-TIES.

Notation: base θ0, models θk, task vectors δk = θk − θ0, per-model scale αk, per-model weight
wk. Defaults are the study's 7B settings; docs/methods.md maps its k and p onto these options.

`weight`, `normalize`, `rescale` and `tie_break` carry mergekit's semantics (a mergekit recipe
is translated onto them, docs/merge.md "Coming from mergekit"); their defaults leave the
study's formulas as they were.
"""

from __future__ import annotations

from typing import Any

import torch

from l2smerge.methods.registry import UNIT, Paper, PerTensorFn, Range, register
from l2smerge.methods.sparsify import (
    TIE_BREAKS,
    MagnitudeTrim,
    apply_magnitude_trim_,
    check_choice,
    check_flag,
    disjoint_mean_,
    disjoint_sum_,
    drop_random_,
    elect_sign,
    magnitude_trims,
    per_model,
    trim_by_magnitude_,
)
from l2smerge.util.errors import warn

# Every method is pure (its inputs are left untouched) but works in place on the task
# vectors it creates itself: for a 7B model's embedding each float32 copy is ~2 GB.


def _weight_sum(weights: list[float]) -> float:
    """Σ wk in float32, as mergekit sums its weight tensor."""
    return float(torch.tensor(weights, dtype=torch.float32).sum())


def _factors(alphas: list[float], weights: list[float]) -> tuple[list[float], float]:
    """What each δk is multiplied by before consensus, and the scale applied after it.

    One α for all models is applied after the (weighted) disjoint mean, as in the TIES paper
    and as mergekit applies `lambda`; per-model αk multiply their δk beforehand, with wk."""
    if len(set(alphas)) == 1:
        return weights, alphas[0]
    return [a * w for a, w in zip(alphas, weights, strict=True)], 1.0


def _consensus(
    base: torch.Tensor,
    deltas: list[torch.Tensor],
    factors: list[float],
    scale: float,
    weights: list[float],
    *,
    normalize: bool,
    tie_break: str,
) -> torch.Tensor:
    """θ0 + scale · Σ (factor_k·δk agreeing with the elected sign) / D (consumes deltas), where
    D is the summed weight of the agreeing models with `normalize` (their count when every
    weight is 1: the TIES disjoint mean) and 1 without."""
    weighted = [d.mul_(f) if f != 1.0 else d for d, f in zip(deltas, factors, strict=True)]
    if len(weighted) == 1 and (not normalize or weights[0] == 1.0):
        mixed = weighted[0]  # a lone task vector agrees with its own sign wherever it is not 0
    else:
        sign = elect_sign(weighted, tie_break=tie_break)
        if normalize:
            unit = all(w == 1.0 for w in weights)
            mixed = disjoint_mean_(weighted, sign, None if unit else weights)
        else:
            mixed = disjoint_sum_(weighted, sign)
        del sign
    if scale != 1.0:
        mixed.mul_(scale)
    return mixed.add_(base)


SOUPS = Paper("Wortsman et al. 2022, Model soups", "https://arxiv.org/abs/2203.05482")
TASK_ARITHMETIC = Paper(
    "Ilharco et al. 2023, Editing Models with Task Arithmetic", "https://arxiv.org/abs/2212.04089"
)
TIES = Paper("Yadav et al. 2023, TIES-Merging", "https://arxiv.org/abs/2306.01708")
DARE = Paper(
    "Yu et al. 2024, Language Models are Super Mario (DARE)", "https://arxiv.org/abs/2311.03099"
)
DROP_RATE = Range(0.0, 1.0, high_inclusive=False)  # p = 1 would rescale by 1/0


def _warn_single_model(config: Any, params: Any, *, progress: bool = True) -> PerTensorFn:
    if len(config.models) == 1 and params.uniform("normalize") is True:
        warn("average of one --model returns that model unchanged (list System 1 and System 2)")
    return lambda _tensor_name: {}


@register(
    "average", needs_base=False, elementwise=True, linear=True, prepare=_warn_single_model,
    per_model=("weight",), papers=(SOUPS,),
)  # fmt: skip
def average(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    weight: float | list[float] = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Mean of the models' weights, Σ wk·θk / Σ wk (the base is not counted unless listed)."""
    weights = per_model(weight, len(tensors), "weight")
    check_flag("normalize", normalize)
    merged = tensors[0].clone() if weights[0] == 1.0 else tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        merged.add_(t, alpha=w)
    if not normalize:
        return merged
    total = _weight_sum(weights)
    if total == 0.0:
        raise ValueError("the weights sum to 0, so they cannot be normalised")
    return merged.div_(total)


def _mix(
    deltas, base: torch.Tensor, factors: list[float], scale: float, divisor: float
) -> torch.Tensor:
    """θ0 + scale · Σ factor_k·δk / divisor, in mergekit's order of operations (so a translated
    recipe gives its bytes); `deltas` yields each δk as a tensor the sum may consume."""
    mixed: torch.Tensor | None = None
    for delta, f in zip(deltas, factors, strict=True):
        if f != 1.0:
            delta.mul_(f)
        mixed = delta if mixed is None else mixed.add_(delta)
        del delta
    assert mixed is not None
    if divisor != 1.0:
        mixed.div_(divisor)
    if scale != 1.0:
        mixed.mul_(scale)
    return mixed.add_(base)


def _divisor(weights: list[float], normalize: bool) -> float:
    """Σ wk with normalize (1 where the weights cancel, as mergekit guards it), else 1."""
    divisor = _weight_sum(weights) if check_flag("normalize", normalize) else 1.0
    return 1.0 if abs(divisor) < 1e-8 else divisor


@register(
    "task_arithmetic", elementwise=True, linear=True, per_model=("alpha", "weight"),
    papers=(TASK_ARITHMETIC,),
)  # fmt: skip
def task_arithmetic(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 0.7,
    weight: float | list[float] = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Task arithmetic: θ0 + Σ αk·wk·δk (divided by Σ wk with normalize)."""
    alphas = per_model(alpha, len(tensors), "alpha")
    weights = per_model(weight, len(tensors), "weight")
    divisor = _divisor(weights, normalize)
    factors, scale = _factors(alphas, weights)
    return _mix((torch.sub(t, base) for t in tensors), base, factors, scale, divisor)


def _ties_trims(
    task_vector_blocks,
    n_models: int,
    numel: int,
    *,
    density=0.2,
    rescale="none",
    tie_break="l2smerge",
    task_vector_rows=None,
    rows=0,
    **_: object,
) -> dict[str, list[MagnitudeTrim]]:
    """First pass of a blockwise TIES: each model's trim decided over the whole tensor."""
    densities = per_model(density, n_models, "density")
    trims = magnitude_trims(
        task_vector_blocks,
        n_models,
        numel,
        densities,
        tie_break=tie_break,
        rescale=rescale,
        task_vector_rows=task_vector_rows,
        rows=rows,
    )
    return {"thresholds": trims}


@register(
    "ties", block_stats=_ties_trims, ranges={"density": UNIT},
    per_model=("alpha", "density", "weight"), papers=(TIES,),
)  # fmt: skip
def ties(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 1.0,
    density: float | list[float] = 0.2,
    weight: float | list[float] = 1.0,
    normalize: bool = True,
    rescale: str = "none",
    tie_break: str = "l2smerge",
    thresholds: list[MagnitudeTrim] | None = None,
    block_offset: int = 0,
) -> torch.Tensor:
    """TIES: trim each δk to its top-density magnitudes, elect signs, add α·disjoint mean.

    With `thresholds` (the executor's first pass over a large tensor), `tensors` and `base`
    are a block of rows starting at flat index `block_offset`, and each δk is trimmed as its
    whole-tensor trim says: the same result as trimming the whole tensor, in a few blocks'
    memory."""
    alphas = per_model(alpha, len(tensors), "alpha")
    weights = per_model(weight, len(tensors), "weight")
    check_flag("normalize", normalize)
    check_choice("rescale", rescale, ("none", "l1"))
    check_choice("tie_break", tie_break, TIE_BREAKS)
    if thresholds is not None:
        deltas = [
            apply_magnitude_trim_(t - base, trim, block_offset)
            for t, trim in zip(tensors, thresholds, strict=True)
        ]
    else:
        densities = per_model(density, len(tensors), "density")
        deltas = [
            trim_by_magnitude_(t - base, d, tie_break=tie_break, rescale=rescale)
            for t, d in zip(tensors, densities, strict=True)
        ]
    factors, scale = _factors(alphas, weights)
    return _consensus(
        base, deltas, factors, scale, weights, normalize=normalize, tie_break=tie_break
    )


@register(
    "dare_ta", ranges={"drop_rate": DROP_RATE}, per_model=("alpha", "drop_rate", "weight"),
    papers=(DARE, TASK_ARITHMETIC),
)  # fmt: skip
def dare_ta(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 0.7,
    drop_rate: float | list[float] = 0.3,
    weight: float | list[float] = 1.0,
    normalize: bool = False,
    rescale: str = "inverse",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE-TA: drop each δk entry with probability p, rescale, then θ0 + Σ αk·wk·δk."""
    alphas = per_model(alpha, len(tensors), "alpha")
    rates = per_model(drop_rate, len(tensors), "drop_rate")
    weights = per_model(weight, len(tensors), "weight")
    divisor = _divisor(weights, normalize)
    factors, scale = _factors(alphas, weights)
    dropped = (
        drop_random_(t - base, p, generator, rescale=rescale)
        for t, p in zip(tensors, rates, strict=True)
    )
    return _mix(dropped, base, factors, scale, divisor)


@register(
    "dare_ties", ranges={"drop_rate": DROP_RATE, "density": UNIT},
    per_model=("alpha", "drop_rate", "density", "weight"), papers=(DARE, TIES),
)  # fmt: skip
def dare_ties(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 1.0,
    drop_rate: float | list[float] = 0.3,
    density: float | list[float] = 0.2,
    weight: float | list[float] = 1.0,
    normalize: bool = True,
    rescale: str = "inverse",
    tie_break: str = "l2smerge",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE-TIES: DARE on each δk, then TIES (trim to density, elect signs, disjoint mean)."""
    alphas = per_model(alpha, len(tensors), "alpha")
    rates = per_model(drop_rate, len(tensors), "drop_rate")
    densities = per_model(density, len(tensors), "density")
    weights = per_model(weight, len(tensors), "weight")
    check_flag("normalize", normalize)
    check_choice("tie_break", tie_break, TIE_BREAKS)
    deltas = []
    for t, p, d in zip(tensors, rates, densities, strict=True):
        dropped = drop_random_(t - base, p, generator, rescale=rescale)
        deltas.append(trim_by_magnitude_(dropped, d, tie_break=tie_break))
    factors, scale = _factors(alphas, weights)
    return _consensus(
        base, deltas, factors, scale, weights, normalize=normalize, tie_break=tie_break
    )
