"""AIM, activation-informed merging, on top of any other registered method.

θ = θ0 + (θmerged − θ0) · (1 − I · (1 − ω)), column by column: I ∈ [0, 1] is the base
model's importance of each input channel of an nn.Linear weight (its columns), measured on
calibration text (l2smerge.calibration). Channels the base relies on (I = 1) keep only ω of the
inner merge's change; unused channels (I = 0) take all of it; ω = 1 returns θmerged exactly.
Embeddings and biases keep θmerged; so do the output head and the norms unless
`relax_head_and_norms` (AIM's reference code relaxes them too: a norm's weight entry by
entry, the head column by column, from the importance of their inputs).

AIM is a wrapper (methods/registry.py): `aim_<METHOD>` exists for every registered method and
is `aim --on METHOD`; bare `aim` is `aim_ties`, as the study ran it.
"""

from __future__ import annotations

from typing import Any

import torch

from l2smerge.calibration.data import METHOD_FIELDS
from l2smerge.methods.registry import (
    UNIT,
    MergeMethod,
    Paper,
    PerTensorFn,
    Wrapper,
    register_wrapper,
)
from l2smerge.util.errors import L2SError


def apply_importance(
    merged: torch.Tensor, base: torch.Tensor, importance: torch.Tensor, omega: float
) -> torch.Tensor:
    """θ0 + (θmerged − θ0)·(1 − I·(1 − ω)) with I broadcast over the rows (one per column;
    a 1-D norm weight takes I entry by entry).

    Computed as θmerged − (θmerged − θ0)·I·(1 − ω), the same value, so that ω = 1 (or I = 0)
    returns θmerged bit for bit."""
    shrink = importance.to(merged.device, merged.dtype) * (1.0 - omega)
    return merged - (merged - base) * shrink


AIM_PAPER = Paper(
    "Nobari et al. 2025, Activation-Informed Merging of Large Language Models",
    "https://arxiv.org/abs/2502.02421",
)
DEFAULT_FIELDS = ",".join(METHOD_FIELDS["aim"])  # the study's: question + short answer
# AIM's own parameters (with their defaults) beside the inner method's.
AIM_PARAMS = {"omega": 0.4, "calibration_fields": DEFAULT_FIELDS, "relax_head_and_norms": False}


def prepare_aim(config: Any, params: Any, *, progress: bool = True) -> PerTensorFn:
    """Compute (or load from the cache) the base's activation importances once per merge."""
    from l2smerge import calibration

    if config.base is None:
        raise L2SError("aim needs --base: its activations are measured on the base model")
    if config.calibration is None:
        raise L2SError(
            "aim needs --calibration FILE (JSONL of question, short_answer, long_answer)"
        )
    if any(m.calibration for m in config.models):
        raise L2SError(
            "aim: calibration data is run through the base, so give one --calibration FILE "
            "for all models"
        )
    fields = calibration.parse_fields(params.uniform("calibration_fields"), "aim")
    importance = calibration.aim_importance(
        config.base,
        config.calibration,
        fields=fields,
        device=config.options.device,
        progress=progress,
    )
    if not params.uniform("relax_head_and_norms"):
        from l2smerge.calibration.activations import output_head_name
        from l2smerge.merge.checkpoint import Checkpoint

        base = Checkpoint(config.base, allow_pickle=config.options.allow_pickle)
        head = output_head_name(config.base)
        importance = {
            module: value
            for module, value in importance.items()
            if module != head
            and f"{module}.weight" in base
            and len(base.info(f"{module}.weight").shape) == 2
        }

    def per_tensor(tensor_name: str) -> dict[str, Any]:
        module = tensor_name.removesuffix(".weight")
        found = importance.get(module) if module != tensor_name else None
        return {"importance": found}

    return per_tensor


def aim_on(inner: MergeMethod, name: str) -> MergeMethod:
    """AIM on top of `inner`: inner's parameters and AIM's, inner's statistics and the base's
    activation importances. AIM runs on whole tensors (never in row blocks)."""
    inner_context = inner.context - {"thresholds", "block_offset"}

    def fn(
        tensors: list[torch.Tensor],
        base: torch.Tensor,
        *,
        omega: float = AIM_PARAMS["omega"],
        calibration_fields: str = AIM_PARAMS["calibration_fields"],
        relax_head_and_norms: bool = AIM_PARAMS["relax_head_and_norms"],
        importance: torch.Tensor | None = None,
        tensor_name: str | None = None,
        **inner_kwargs: Any,
    ) -> torch.Tensor:
        if not 0.0 <= omega <= 1.0:
            raise L2SError(f"aim: omega = {omega} is outside [0, 1]")
        if "tensor_name" in inner.context:
            inner_kwargs["tensor_name"] = tensor_name
        merged = inner.fn(tensors, base, **inner_kwargs)
        if importance is None:
            return merged
        if merged.ndim not in (1, 2) or merged.shape[-1] != importance.numel():
            raise L2SError(
                f"aim: tensor {tensor_name!r} of shape {tuple(merged.shape)} does not match "
                f"its importance of {importance.numel()} input channels"
            )
        return apply_importance(merged, base, importance, omega)

    def prepare(config: Any, params: Any, *, progress: bool = True) -> PerTensorFn:
        hooks = [prepare_aim(config, params, progress=progress)]
        if inner.prepare is not None:
            hooks.insert(0, inner.prepare(config, params, progress=progress))
        return lambda tensor_name: {k: v for h in hooks for k, v in h(tensor_name).items()}

    return MergeMethod(
        name,
        fn,
        {**inner.params, **AIM_PARAMS},
        # tensor_name too: AIM's error names the tensor
        inner_context | {"importance", "tensor_name"},
        needs_base=True,
        summary=f"AIM on top of {inner.name} (= aim --on {inner.name}).",
        prepare=prepare,
        ranges={**inner.ranges, "omega": UNIT},
        per_model=inner.per_model,
        whole_model=inner.whole_model | {"calibration_fields", "relax_head_and_norms"},
        default_dtype=inner.default_dtype,
        papers=(AIM_PAPER, *inner.papers),
        inner=inner.name,
    )


def aim(
    tensors: list[torch.Tensor], base: torch.Tensor, *, on: str = "ties", **kwargs: Any
) -> torch.Tensor:
    """AIM on top of the method `on`, called directly on tensors (the executor calls the
    registered `aim_<on>`): its parameters, AIM's and the context as keyword arguments."""
    from l2smerge.methods.registry import resolve_method

    method = resolve_method("aim", on)
    unknown = set(kwargs) - set(method.params) - method.context - {"generator"}
    if unknown:
        takes = ", ".join(p for p in method.params if p not in AIM_PARAMS) or "no parameters"
        raise L2SError(
            f"aim --on {on}: unknown parameter {sorted(unknown)[0]!r}; {on} takes {takes}"
        )
    if "generator" not in method.context:
        kwargs.pop("generator", None)
    return method.fn(tensors, base, **kwargs)


register_wrapper(
    Wrapper(
        "aim",
        aim_on,
        default_inner="ties",
        summary="AIM on top of any method: shrink its change on the base's important inputs.",
    )
)
