"""AIM, activation-informed merging, on top of any other registered method.

θ = θ0 + (θmerged − θ0) · (1 − I · (1 − ω)), column by column: I ∈ [0, 1] is the base
model's importance of each input channel of an nn.Linear weight (its columns), measured on
calibration text (l2smerge.calibration). Channels the base relies on (I = 1) keep only ω of the
inner merge's change; unused channels (I = 0) take all of it; ω = 1 returns θmerged exactly.
Embeddings and biases keep θmerged; so do the output head and the norms unless
`relax_head_and_norms` (AIM's reference code relaxes them too: a norm's weight entry by
entry, the head column by column, from the importance of their inputs).

`aim --on METHOD` wraps any method; `aim_ties` is `aim --on ties` as its own method name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from l2smerge.methods.registry import CONTEXT_ARGS, METHODS, get_method, register
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


def _calibration_fields(config: Any, default: str) -> str:
    value = (config.parameters or {}).get("calibration_fields", default)
    if not isinstance(value, str):
        raise L2SError(
            "calibration_fields: give one comma-separated string, e.g. question,short_answer"
        )
    return value


def _check_inner(on: str) -> None:
    if on == "aim" or on.startswith("aim_"):
        raise L2SError(f"aim --on {on}: AIM cannot wrap itself; choose a plain method")
    get_method(on)  # an unknown name is a clear error here, before any statistics


def prepare_aim(config: Any, *, progress: bool = True) -> Callable[[str], dict[str, Any]]:
    """Compute (or load from the cache) the base's activation importances once per merge."""
    from l2smerge import calibration

    _check_inner(getattr(config, "on", None) or "ties")
    if config.base is None:
        raise L2SError("aim needs --base: its activations are measured on the base model")
    if config.calibration is None:
        raise L2SError(
            "aim needs --calibration FILE (JSONL of question, short_answer, long_answer)"
        )
    if any("calibration_fields" in m.parameters or m.calibration for m in config.models):
        raise L2SError(
            "aim: calibration data is run through the base, so give one --calibration FILE "
            "and one calibration_fields for all models"
        )
    fields = calibration.parse_fields(_calibration_fields(config, "question,short_answer"), "aim")
    relax = (config.parameters or {}).get("relax_head_and_norms", False)
    if not isinstance(relax, bool):
        raise L2SError("aim: relax_head_and_norms is true or false, once for the whole model")
    importance = calibration.aim_importance(
        config.base, config.calibration, fields=fields, device=config.device, progress=progress
    )
    if not relax:
        from l2smerge.calibration.activations import output_head_name
        from l2smerge.merge.checkpoint import Checkpoint

        base = Checkpoint(config.base, allow_pickle=config.allow_pickle)
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


def _context_for(inner_name: str, context: dict[str, Any]) -> dict[str, Any]:
    wanted = get_method(inner_name).context
    return {k: v for k, v in context.items() if k in wanted}


@register("aim", prepare=prepare_aim)
def aim(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    on: str = "ties",
    omega: float = 0.4,
    calibration_fields: str = "question,short_answer",
    relax_head_and_norms: bool = False,
    importance: torch.Tensor | None = None,
    tensor_name: str | None = None,
    generator: torch.Generator | None = None,
    **inner_params: Any,
) -> torch.Tensor:
    """AIM on top of the method `on`: shrink its change on the base's important input channels."""
    _check_inner(on)
    if not 0.0 <= omega <= 1.0:
        raise L2SError(f"aim: omega = {omega} is outside [0, 1]")
    inner = get_method(on)
    unknown = set(inner_params) - set(inner.params)
    if unknown:
        raise L2SError(
            f"aim --on {on}: unknown parameter {sorted(unknown)[0]!r}; "
            f"{on} takes {', '.join(inner.params) or 'no parameters'}"
        )
    context = {"tensor_name": tensor_name, "generator": generator}
    merged = inner.fn(tensors, base, **inner_params, **_context_for(on, context))
    if importance is None:
        return merged
    if merged.ndim not in (1, 2) or merged.shape[-1] != importance.numel():
        raise L2SError(
            f"aim: tensor {tensor_name!r} of shape {tuple(merged.shape)} does not match its "
            f"importance of {importance.numel()} input channels"
        )
    return apply_importance(merged, base, importance, omega)


def register_aim_on(inner_name: str) -> None:
    """Register `aim_<inner>`: AIM fixed on one inner method, with that method's parameters
    (and ω) as its own, so `--method aim_ties --density 0.2` works like any method."""
    inner = get_method(inner_name)
    name = f"aim_{inner_name}"

    def aim_on(tensors: list[torch.Tensor], base: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return aim(tensors, base, on=inner_name, **kwargs)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("tensors", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("base", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("omega", keyword, default=0.4),
        inspect.Parameter("calibration_fields", keyword, default="question,short_answer"),
        inspect.Parameter("relax_head_and_norms", keyword, default=False),
        *(inspect.Parameter(p, keyword, default=d) for p, d in inner.params.items()),
        *(
            inspect.Parameter(c, keyword, default=None)
            # not "thresholds", "block_offset": AIM runs on whole tensors, never in row blocks
            for c in sorted(
                CONTEXT_ARGS & (inner.context | {"importance"}) - {"thresholds", "block_offset"}
            )
        ),
    ]
    aim_on.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    aim_on.__name__ = name
    aim_on.__doc__ = f"AIM on top of {inner_name} (= aim --on {inner_name})."
    register(name, prepare=prepare_aim)(aim_on)


if "ties" in METHODS:
    register_aim_on("ties")
