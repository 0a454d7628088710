"""Method parameters in a merge config: checking every value the config gives against the
method's declaration (methods/registry.py) before any tensor is read, and resolving them per
tensor for the executor.

A parameter spec is a scalar, a list interpolated over depth (first layer -> last layer), or
name rules (glob, first match); see merge/config.py and docs/merge.md.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from l2smerge.util.errors import L2SError
from l2smerge.util.schema import short_repr

if TYPE_CHECKING:
    from l2smerge.merge.config import MergeConfig
    from l2smerge.methods import MergeMethod

# Valid ranges of the shared parameters, checked before any tensor is read:
# name: (low, high, low_inclusive, high_inclusive)
PARAM_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "density": (0.0, 1.0, True, True),
    "drop_rate": (0.0, 1.0, True, False),
    "omega": (0.0, 1.0, True, True),
    "temperature": (0.0, math.inf, False, True),
    "rank": (0, math.inf, True, True),
    "threshold": (0.0, math.inf, True, True),
    "iterations": (1, math.inf, True, True),
}
# The merge computes in float32: a parameter beyond its range becomes inf at the first tensor.
FLOAT32_MAX = 3.4028234663852886e38

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


# -- per-tensor resolution -----------------------------------------------------------------


def in_numbered_layer(tensor_name: str) -> bool:
    """Whether the tensor belongs to a numbered decoder layer (`model.layers.3.mlp...`)."""
    return _LAYER.search(tensor_name) is not None


def layer_depth(tensor_name: str, num_layers: int) -> float:
    """Position of a tensor in the network in [0, 1]: layer i of L is i/(L-1); tensors outside
    the numbered layers count as 0 if they are input embeddings, else 1 (final norm, head)."""
    m = _LAYER.search(tensor_name)
    if m is None:
        return 0.0 if "embed" in tensor_name else 1.0
    if num_layers <= 1:
        return 0.0
    return min(int(m.group(1)) / (num_layers - 1), 1.0)


def interpolate(values: list[float], depth: float) -> float:
    if len(values) == 1:
        return float(values[0])
    x = depth * (len(values) - 1)
    i = min(int(x), len(values) - 2)
    frac = x - i
    return float(values[i]) * (1 - frac) + float(values[i + 1]) * frac


_NO_MATCH = object()


def resolve_value(value: Any, tensor_name: str, depth: float) -> Any:
    """The value of one parameter spec for one tensor (or _NO_MATCH if no rule matches)."""
    if isinstance(value, dict):
        for pattern, inner in value.items():
            if fnmatch.fnmatchcase(tensor_name, pattern):
                return resolve_value(inner, tensor_name, depth)
        return _NO_MATCH
    if isinstance(value, list):
        return interpolate(value, depth)
    return value


def iter_numbers(value: Any) -> Iterator[Any]:
    for leaf, _ in _leaves(value):
        if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            yield leaf


def _leaves(value: Any) -> Iterator[tuple[Any, bool]]:
    """Every scalar of a parameter spec, and whether it sits in a depth list."""
    if isinstance(value, dict):
        for inner in value.values():
            yield from _leaves(inner)
    elif isinstance(value, list):
        for inner in value:
            yield inner, True
    else:
        yield value, False


def _wants(default: Any) -> tuple[str, Any] | None:
    """What a parameter with this default accepts: (description, test)."""
    if isinstance(default, bool):
        return "true or false", lambda x: isinstance(x, bool)
    if isinstance(default, int):
        return "a whole number", lambda x: isinstance(x, int) and not isinstance(x, bool)
    if isinstance(default, float):
        return "a number", lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if isinstance(default, str):
        return "text", lambda x: isinstance(x, str)
    return None


def check_parameter(name: str, value: Any, default: Any, where: str) -> None:
    """One parameter spec: every value the type of the method's default (a number where it
    wants a number: `density: yes` or `density: lots` is refused), depth lists only of
    numbers, and every number in range."""
    wants = _wants(default)
    for leaf, in_list in _leaves(value):
        if wants is not None and not wants[1](leaf):
            got = "true" if leaf is True else "false" if leaf is False else short_repr(leaf)
            raise L2SError(f"{where}.{name}: expected {wants[0]}, got {got}")
        if in_list and not isinstance(default, float):
            raise L2SError(
                f"{where}.{name}: a depth list interpolates between numbers; give one "
                f"{wants[0] if wants else 'value'} (or name rules)"
            )
    check_range(name, value, where)


def check_range(name: str, value: Any, where: str) -> None:
    for x in iter_numbers(value):
        if not math.isfinite(x):
            raise L2SError(f"{where}: {name} = {x} is not a finite number")
        if abs(x) > FLOAT32_MAX:
            raise L2SError(
                f"{where}: {name} = {x:g} is beyond float32's range (±3.4e38), in which "
                "the merge computes"
            )
    if name not in PARAM_RANGES:
        return
    low, high, low_inclusive, high_inclusive = PARAM_RANGES[name]
    for x in iter_numbers(value):
        below = x < low or (x == low and not low_inclusive)
        above = x > high or (x == high and not high_inclusive)
        if below or above:
            opening = "[" if low_inclusive else "("
            closing = "]" if high_inclusive else ")"
            raise L2SError(f"{where}: {name} = {x} is outside {opening}{low}, {high}{closing}")


def method_parameters(
    method_name: str, on: str | None, specs: list[tuple[str, dict[str, Any]]]
) -> tuple[MergeMethod, dict[str, Any]]:
    """Check the parameter specs given for `method_name` (`on`: its inner method) and return
    the method and every parameter name it accepts -> default. `specs`: (where, params)."""
    from l2smerge.methods import get_method

    method = get_method(method_name)
    allowed = {k: v for k, v in method.params.items() if k != "on"}
    if on is not None and "on" not in method.params:
        raise L2SError(f"method {method_name!r} does not wrap another method; drop --on")
    inner_name = on if on is not None else method.params.get("on")
    if inner_name is not None:  # `aim` without --on wraps its default inner method
        inner = get_method(inner_name)
        allowed = {**inner.params, **allowed}
    for where, params in specs:
        for name, value in params.items():
            if name not in allowed:
                takes = ", ".join(sorted(allowed)) or "no parameters"
                raise L2SError(
                    f"{where}: method {method_name!r} has no parameter {name!r} (takes: {takes})"
                )
            check_parameter(name, value, allowed[name], where)
    return method, allowed


class ParameterResolver:
    """Turns the config's parameter specs into plain per-tensor values for the method fn.

    `allowed` maps every parameter name the method takes to its default. A parameter set
    per model anywhere resolves to a list (one value per model, in --model order)."""

    def __init__(self, config: MergeConfig, allowed: dict[str, Any], num_layers: int) -> None:
        self.config = config
        self.allowed = allowed
        self.num_layers = num_layers
        self.per_model_names = {n for m in config.models for n in m.parameters}

    def resolve(self, tensor_name: str) -> dict[str, Any]:
        depth = layer_depth(tensor_name, self.num_layers)
        out: dict[str, Any] = {}
        for name in self.config.parameters.keys() | self.per_model_names:
            shared = self._one(
                self.config.parameters.get(name, _NO_MATCH), name, tensor_name, depth
            )
            if name in self.per_model_names:
                out[name] = [
                    self._one(m.parameters.get(name, _NO_MATCH), name, tensor_name, depth, shared)
                    for m in self.config.models
                ]
            else:
                out[name] = shared
        return out

    def _one(self, spec, name, tensor_name, depth, fallback=_NO_MATCH):
        value = _NO_MATCH if spec is _NO_MATCH else resolve_value(spec, tensor_name, depth)
        if value is _NO_MATCH:
            value = fallback if fallback is not _NO_MATCH else self.allowed[name]
        return value
