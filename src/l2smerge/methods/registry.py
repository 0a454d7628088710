"""The method registry: name -> pure tensor function + everything else about it.

A merge method is a plain function

    fn(tensors: list[Tensor], base: Tensor | None, *, <params with defaults>, <context>) -> Tensor

where `tensors` are the same-named float32 tensors of the `--model` models (in order), `base`
is the base model's tensor (None for methods that need no base), the keyword-only parameters
are what users set (`alpha`, `density`, ...), and a few reserved keyword names are *context*
the executor supplies per tensor instead of the user (see CONTEXT_ARGS). `@register(...)`
reads the signature for the parameters and their defaults and carries the rest: ranges, which
parameters may differ per model or must be one value for the whole model, what the executor
may do with the function, the paper. Adding a method is one module in methods/ with its
function and one `@register(...)` (docs/methods.md, "Adding a method").

A *wrapping* method (AIM) is registered with `register_wrapper`: it exists as
`<wrapper>_<method>` for every other registered method (`aim_ties`, `aim_sens`, ...), as
`<wrapper>` on its default inner method, and as `<wrapper> --on <method>`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
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
# block_stats(task_vector_blocks, n_models, numel, *, task_vector_rows, rows, **params) ->
# extra kwargs for fn, where task_vector_blocks(k) yields model k's task vector (float32) one
# block of rows at a time, task_vector_rows(k, start, stop) reads its rows start..stop-1 (one
# positioned read per input) and `rows` is the tensor's number of rows.
BlockStatsFn = Callable[..., dict[str, Any]]
# A method that needs statistics (AIM's activations, Sens's sensitivities) or checks the
# whole merge registers `prepare(config, params, *, progress) -> per_tensor`: `config` is the
# MergeConfig (paths, device, calibration files), `params` the merge's ParameterResolver
# (merge/config.py: `uniform(name)`, `for_models(name)`; the one way to read parameters),
# `progress` whether progress bars may show. The executor calls it once before the tensor
# loop; `per_tensor(name)` returns extra keyword arguments for that tensor: context values
# (e.g. {"importance": I}) and/or per-tensor parameter overrides (e.g. {"alpha": [0.8]}).
PerTensorFn = Callable[[str], dict[str, Any]]
PrepareFn = Callable[..., PerTensorFn]


@dataclass(frozen=True)
class Range:
    """The values a number parameter may take: low..high, each end open or closed."""

    low: float
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = True

    def __contains__(self, x: float) -> bool:
        above_low = x > self.low or (x == self.low and self.low_inclusive)
        below_high = x < self.high or (x == self.high and self.high_inclusive)
        return above_low and below_high

    def __str__(self) -> str:
        opening = "[" if self.low_inclusive else "("
        closing = "]" if self.high_inclusive else ")"
        return f"{opening}{self.low}, {self.high}{closing}"


UNIT = Range(0.0, 1.0)  # a fraction: density, omega
NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_inclusive=False)


@dataclass(frozen=True)
class Paper:
    citation: str
    url: str


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MethodFn
    params: dict[str, Any]  # user parameter name -> default value
    context: frozenset[str]  # which CONTEXT_ARGS the function takes
    needs_base: bool = True
    summary: str = ""
    prepare: PrepareFn | None = None
    ranges: dict[str, Range] = field(default_factory=dict)
    per_model: frozenset[str] = frozenset()  # may be set per model (one value per --model)
    whole_model: frozenset[str] = frozenset()  # one value for every tensor (no schedules)
    elementwise: bool = False
    linear: bool = False
    block_stats: BlockStatsFn | None = None
    optional_base: bool = False
    default_dtype: str | None = None
    papers: tuple[Paper, ...] = ()
    wrapper: str | None = None  # for `aim_ties`: "aim"
    inner: str | None = None  # ... and "ties"


@dataclass(frozen=True)
class Wrapper:
    """A method that wraps any other: `build(inner, name)` makes the MergeMethod of the wrapper
    on `inner`; `default_inner` is what the bare name wraps (`aim` = `aim_ties`)."""

    name: str
    build: Callable[[MergeMethod, str], MergeMethod]
    default_inner: str
    summary: str = ""


METHODS: dict[str, MergeMethod] = {}
WRAPPERS: dict[str, Wrapper] = {}


def register(
    name: str,
    *,
    needs_base: bool = True,
    prepare: PrepareFn | None = None,
    ranges: dict[str, Range] | None = None,
    per_model: Iterable[str] = (),
    whole_model: Iterable[str] = (),
    elementwise: bool = False,
    linear: bool = False,
    block_stats: BlockStatsFn | None = None,
    optional_base: bool = False,
    default_dtype: str | None = None,
    papers: Iterable[Paper] = (),
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add `fn` to METHODS under `name`, reading its parameters from its signature.

    `ranges`: the values each number parameter may take (checked before any tensor is read).
    `per_model`: parameters that may differ per model (`--alpha 0.7,0.3`; fn then gets a
    list, one value per model). `whole_model`: parameters that take one value for the whole
    merge, never a depth list or name rules (those a `prepare` hook reads).
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
    (Sens: float32, as the study saved its Sens merges). `papers`: what the model card cites.
    """

    def decorate(fn: MethodFn) -> MethodFn:
        params, context = read_signature(name, fn)
        declared = {*(ranges or {}), *per_model, *whole_model}
        if declared - set(params):
            unknown = sorted(declared - set(params))[0]
            raise ValueError(f"method {name!r}: {unknown!r} is not one of its parameters")
        add(
            MergeMethod(
                name, fn, params, context, needs_base, (inspect.getdoc(fn) or "").split("\n")[0],
                prepare, dict(ranges or {}), frozenset(per_model), frozenset(whole_model),
                elementwise, linear, block_stats, optional_base, default_dtype, tuple(papers),
            )
        )  # fmt: skip
        return fn

    return decorate


def read_signature(name: str, fn: MethodFn) -> tuple[dict[str, Any], frozenset[str]]:
    """A method function's parameters (name -> default) and the context it takes."""
    params: dict[str, Any] = {}
    context: set[str] = set()
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.name in CONTEXT_ARGS:
            context.add(p.name)
        elif p.default is inspect.Parameter.empty:
            raise ValueError(f"method {name!r}: parameter {p.name!r} needs a default")
        else:
            params[p.name] = p.default
    return params, frozenset(context)


def add(method: MergeMethod) -> None:
    """Add a method, and each wrapper's method on it."""
    if method.name in METHODS or method.name in WRAPPERS:
        raise ValueError(f"merge method {method.name!r} registered twice")
    METHODS[method.name] = method
    if method.wrapper is None:
        for wrapper in WRAPPERS.values():
            _wrap(wrapper, method)


def register_wrapper(wrapper: Wrapper) -> None:
    """Add a wrapping method: `<name>_<method>` for every method registered now or later."""
    if wrapper.name in METHODS or wrapper.name in WRAPPERS:
        raise ValueError(f"merge method {wrapper.name!r} registered twice")
    WRAPPERS[wrapper.name] = wrapper
    for method in [m for m in METHODS.values() if m.wrapper is None]:
        _wrap(wrapper, method)


def _wrap(wrapper: Wrapper, inner: MergeMethod) -> None:
    add(replace(wrapper.build(inner, f"{wrapper.name}_{inner.name}"), wrapper=wrapper.name))
    if inner.name == wrapper.default_inner:  # the bare name: the wrapper on its default
        METHODS[wrapper.name] = replace(METHODS[f"{wrapper.name}_{inner.name}"], name=wrapper.name)


def uses_base(method: MergeMethod, base_given: bool) -> bool:
    """Whether `method` receives the base tensor: always when it needs one, and when one is
    given if the base is optional for it."""
    return method.needs_base or (base_given and method.optional_base)


def plain_methods() -> list[str]:
    """The registered methods that wrap no other, in registration order."""
    return [name for name, m in METHODS.items() if m.wrapper is None]


def known_methods() -> str:
    """The method names for an error message: the plain ones and each wrapper's forms."""
    forms = [f"{w}, {w}_<method>" for w in WRAPPERS]
    return ", ".join([*sorted(plain_methods()), *forms])


def get_method(name: str) -> MergeMethod:
    from l2smerge.util.errors import L2SError

    if name not in METHODS:
        raise L2SError(f"unknown merge method {name!r}; known methods: {known_methods()}")
    return METHODS[name]


def resolve_method(name: str, on: str | None = None) -> MergeMethod:
    """The method a config names: `name`, or the wrapper `name` on the method `on`
    (`aim --on ties` is `aim_ties`)."""
    from l2smerge.util.errors import L2SError

    if on is None:
        return get_method(name)
    if name not in WRAPPERS:
        get_method(name)  # an unknown name says so first
        raise L2SError(f"method {name!r} does not wrap another method; drop --on")
    inner = get_method(on)
    if inner.wrapper is not None or on in WRAPPERS:
        raise L2SError(f"{name} --on {on}: {name} cannot wrap itself; choose a plain method")
    return get_method(f"{name}_{on}")
