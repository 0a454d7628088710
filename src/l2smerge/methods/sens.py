"""Sens-Merging (Liu et al. 2025, arXiv 2502.12420): task arithmetic with per-layer,
per-model coefficients from parameter sensitivity and cross-task logit alignment.

The statistics come from calibration passes (l2smerge.calibration, cached on disk); the
`prepare` hook turns them, with α and T, into each tensor's per-model coefficients, which
reach `sens` as its `alpha` list. docs/methods.md gives every formula and open choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from l2smerge.methods.registry import register
from l2smerge.util.errors import L2SError

DEFAULT_FIELDS = "question,short_answer,long_answer"


def _scalar(config: Any, name: str, default: float) -> float:
    value = (config.parameters or {}).get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise L2SError(f"sens: {name} must be one number (Sens sets per-layer values itself)")
    if any(name in m.parameters for m in config.models):
        raise L2SError(f"sens: {name} cannot be set per model (Sens sets per-model values itself)")
    return float(value)


def prepare_sens(config: Any) -> Callable[[str], dict[str, Any]]:
    """Sensitivities and alignment (cached), then λ_k^l for every layer; per tensor, its
    layer's coefficients as the `alpha` list (tensors outside every layer keep α)."""
    from l2smerge import calibration

    if config.base is None:
        raise L2SError("sens needs --base: sensitivities are of the task vectors θk − θ0")
    if config.calibration is None:
        raise L2SError(
            "sens needs --calibration FILE (JSONL of question, short_answer, long_answer)"
        )
    alpha = _scalar(config, "alpha", 0.7)
    temperature = _scalar(config, "temperature", 2.0)
    raw_fields = (config.parameters or {}).get("calibration_fields", DEFAULT_FIELDS)
    if not isinstance(raw_fields, str):
        raise L2SError("calibration_fields: give one comma-separated string")
    fields = calibration.parse_fields(raw_fields, "sens")
    sensitivities, alignment = calibration.sens_statistics(
        config.base,
        [m.path for m in config.models],
        config.calibration,
        fields=fields,
        device=config.device,
    )
    coefficients = calibration.sens_coefficients(
        sensitivities, alignment, alpha=alpha, temperature=temperature
    )

    def per_tensor(tensor_name: str) -> dict[str, Any]:
        group = calibration.layer_group(tensor_name)
        if group not in coefficients[0]:
            return {"alpha": [alpha] * len(coefficients)}
        return {"alpha": [c[group] for c in coefficients]}

    return per_tensor


@register("sens", prepare=prepare_sens)
def sens(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 0.7,
    temperature: float = 2.0,
    calibration_fields: str = DEFAULT_FIELDS,
) -> torch.Tensor:
    """Sens-Merging: θ0 + Σ λk·δk with λk per layer from sensitivity and alignment (needs
    --calibration). `alpha` arrives as this tensor's per-model λk; `temperature` is used by
    the calibration step."""
    alphas = alpha if isinstance(alpha, (list, tuple)) else [alpha] * len(tensors)
    if len(alphas) != len(tensors):
        raise L2SError(f"sens: {len(alphas)} coefficients for {len(tensors)} models")
    merged = base.clone()
    for t, a in zip(tensors, alphas, strict=True):
        merged.add_(t - base, alpha=float(a))
    return merged
