"""The method registry: name -> pure tensor function + its parameter schema.

A merge method is a plain function

    fn(tensors: list[Tensor], base: Tensor | None, *, <params with defaults>, <context>) -> Tensor

where `tensors` are the same-named float32 tensors of the `--model` models (in order), `base`
is the base model's tensor (None for methods that need no base), the keyword-only parameters
are what users set (`alpha`, `density`, ...), and a few reserved keyword names are *context*
the executor supplies per tensor instead of the user (see CONTEXT_ARGS). Registering reads the
signature, so adding a method is one function plus one `@register(...)` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# Keyword arguments the executor fills in per tensor; never user parameters.
#   tensor_name: the tensor's name in the checkpoint (e.g. "model.layers.3.mlp.up_proj.weight")
#   generator:   a torch.Generator seeded from (seed, tensor_name), for random methods (DARE)
#   importance:  per-input-channel importance in [0, 1] for this tensor (AIM), or None
#   thresholds:  per-model magnitude trims from a first pass over row blocks (TIES on
#                a large tensor, see `block_stats` below), or None to compute them in place
#   block_offset: flat index of the first entry of the block of rows the call gets within
#                the whole tensor (0 for a whole tensor), for methods with `block_stats`
CONTEXT_ARGS = frozenset({"tensor_name", "generator", "importance", "thresholds", "block_offset"})

MethodFn = Callable[..., torch.Tensor]
# block_stats(task_vector_blocks, n_models, numel, **params) -> extra kwargs for fn, where
# task_vector_blocks(k) yields model k's task vector (float32) one block of rows at a time.
BlockStatsFn = Callable[..., dict[str, Any]]
# A method that needs statistics (AIM's activations, Sens's sensitivities) registers a
# `prepare(config) -> per_tensor` hook (it may take a keyword `progress`: whether progress
# bars may show). The executor calls it once before the tensor loop; `per_tensor(name)`
# returns extra keyword arguments for that tensor: context values (e.g. {"importance": I})
# and/or per-tensor parameter overrides (e.g. {"alpha": [0.8]}).
PrepareFn = Callable[..., Callable[[str], dict[str, Any]]]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MethodFn
    params: dict[str, Any]  # user parameter name -> default value
    context: frozenset[str]  # which CONTEXT_ARGS the function takes
    needs_base: bool
    summary: str = ""
    prepare: PrepareFn | None = None
    extra: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    needs_base: bool = True,
    prepare: PrepareFn | None = None,
    elementwise: bool = False,
    linear: bool = False,
    block_stats: BlockStatsFn | None = None,
    optional_base: bool = False,
    default_dtype: str | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add `fn` to METHODS under `name`, reading its parameters from its signature.

    `elementwise=True` declares that each output entry depends only on the same entry of the
    inputs (and no random generator): the executor may then call `fn` on blocks of rows of a
    large tensor instead of the whole tensor, bounding memory independently of its size.
    `block_stats` declares that fn is elementwise once a few per-tensor statistics are known
    (TIES: each model's magnitude threshold): the executor computes them in a first pass over
    row blocks and passes them to every block's call.
    `linear=True` declares that each output entry is a fixed linear combination of the same
    entries of the inputs, so a NaN or Inf input always shows in the output: the executor then
    checks only the output (and the inputs only when that fails), one pass over memory instead
    of one per input.
    `optional_base=True` (with needs_base=False): the method works without a base but uses
    one when given (LoRE). `default_dtype` is the output dtype when the user sets none
    (Sens: float32, as the study saved its Sens merges).
    """

    def decorate(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        params: dict[str, Any] = {}
        context: set[str] = set()
        for p in inspect.signature(fn).parameters.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            if p.name in CONTEXT_ARGS:
                context.add(p.name)
            else:
                if p.default is inspect.Parameter.empty:
                    raise ValueError(f"method {name!r}: parameter {p.name!r} needs a default")
                params[p.name] = p.default
        summary = (inspect.getdoc(fn) or "").split("\n")[0]
        METHODS[name] = MergeMethod(
            name,
            fn,
            params,
            frozenset(context),
            needs_base,
            summary,
            prepare,
            extra={
                "elementwise": elementwise,
                "linear": linear,
                "block_stats": block_stats,
                "optional_base": optional_base,
                "default_dtype": default_dtype,
            },
        )
        return fn

    return decorate


def uses_base(method: MergeMethod, base_given: bool) -> bool:
    """Whether `method` receives the base tensor: always when it needs one, and when one is
    given if the base is optional for it."""
    return method.needs_base or (base_given and bool(method.extra.get("optional_base")))


def get_method(name: str) -> MergeMethod:
    from l2smerge.util.errors import L2SError

    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise L2SError(f"unknown merge method {name!r}; known methods: {known}")
    return METHODS[name]
