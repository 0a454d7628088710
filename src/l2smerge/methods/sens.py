"""Sens-Merging (Liu et al. 2025, arXiv 2502.12420): task arithmetic with per-layer,
per-model coefficients from parameter sensitivity and cross-task logit alignment.

The statistics come from calibration passes (l2smerge.calibration, cached on disk); the
`prepare` hook turns them, with α and T, into each tensor's per-model coefficients, which
reach `sens` as its `alpha` list. docs/methods.md gives every formula and open choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from l2smerge.calibration.data import METHOD_FIELDS
from l2smerge.methods.registry import POSITIVE, Paper, PerTensorFn, register
from l2smerge.util.errors import L2SError, warn

DEFAULT_FIELDS = ",".join(METHOD_FIELDS["sens"])  # the study's: question + both answers


def calibration_per_model(config: Any, params: Any) -> tuple[list[Path], list[tuple[str, ...]]]:
    """Each model's calibration file (its own `calibration`, else the shared one) and fields
    (its own `calibration_fields`, else the shared ones, else question + both answers)."""
    from l2smerge.calibration import parse_fields

    files = []
    for model in config.models:
        file = model.calibration or config.calibration
        if file is None:
            raise L2SError(
                f"sens needs calibration data for --model {model.path}: --calibration FILE "
                "(every model) or --calibration MODEL=FILE (JSONL of question, short_answer, "
                "long_answer)"
            )
        files.append(Path(file))
    fields = [parse_fields(f, "sens") for f in params.for_models("calibration_fields")]
    return files, fields


def prepare_sens(config: Any, params: Any, *, progress: bool = True) -> PerTensorFn:
    """Sensitivities and alignment (cached), then λ_k^l for every layer; per tensor, its
    layer's coefficients as the `alpha` list (tensors outside every layer keep α)."""
    from l2smerge import calibration

    if config.base is None:
        raise L2SError("sens needs --base: sensitivities are of the task vectors θk − θ0")
    alpha, temperature = float(params.uniform("alpha")), float(params.uniform("temperature"))
    files, fields = calibration_per_model(config, params)
    sensitivities, alignment = calibration.sens_statistics(
        config.base,
        [m.path for m in config.models],
        files,
        fields=fields,
        device=config.options.device,
        progress=progress,
    )
    active = set(calibration.active_models(sensitivities))
    for k, model in enumerate(config.models):
        if k not in active:
            warn(
                f"sens: --model {model.path} has a zero task vector (it equals the base); "
                "it is left out of the statistics and adds nothing"
            )
    coefficients = calibration.sens_coefficients(
        sensitivities, alignment, alpha=alpha, temperature=temperature
    )
    outside = [alpha if k in active else 0.0 for k in range(len(coefficients))]

    def per_tensor(tensor_name: str) -> dict[str, Any]:
        group = calibration.layer_group(tensor_name)
        if group not in coefficients[0]:
            return {"alpha": outside}
        return {"alpha": [c[group] for c in coefficients]}

    return per_tensor


@register(
    "sens", prepare=prepare_sens, default_dtype="float32", ranges={"temperature": POSITIVE},
    # α and T are turned into per-layer, per-model coefficients by prepare_sens
    whole_model=("alpha", "temperature", "calibration_fields"), per_model=("calibration_fields",),
    elementwise=True, linear=True,
    papers=(Paper("Liu et al. 2025, Sens-Merging", "https://arxiv.org/abs/2502.12420"),),
)  # fmt: skip
def sens(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    alpha: float | list[float] = 0.7,
    temperature: float = 2.0,
    calibration_fields: str = DEFAULT_FIELDS,
) -> torch.Tensor:
    """Sens-Merging: θ0 + Σ λk·δk, λk per layer from sensitivity and cross-task alignment.

    Needs calibration data (--calibration, one file or one per model). `alpha` arrives as
    this tensor's per-model λk; `temperature` and `calibration_fields` are used by the
    calibration step. Saved in float32 unless --dtype says otherwise, as the study did."""
    alphas = alpha if isinstance(alpha, (list, tuple)) else [alpha] * len(tensors)
    if len(alphas) != len(tensors):
        raise L2SError(f"sens: {len(alphas)} coefficients for {len(tensors)} models")
    merged = base.clone()
    for t, a in zip(tensors, alphas, strict=True):
        merged.add_(t - base, alpha=float(a))
    return merged
