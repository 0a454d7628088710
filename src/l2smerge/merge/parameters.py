"""Method parameters in a merge config: checking every value the config gives against the
method's declaration (methods/registry.py) before any tensor is read, and resolving them per
tensor for the executor.

A parameter spec is a scalar, a list interpolated over depth (first layer -> last layer), or
name rules (glob, first match); see merge/config.py and docs/merge.md.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from l2smerge.merge.layers import layer_of
from l2smerge.util.errors import L2SError
from l2smerge.util.schema import short_repr

if TYPE_CHECKING:
    from l2smerge.merge.config import MergeConfig
    from l2smerge.methods import MergeMethod

# The merge computes in float32: a parameter beyond its range becomes inf at the first tensor.
FLOAT32_MAX = 3.4028234663852886e38


# -- per-tensor resolution -----------------------------------------------------------------


def layer_depth(tensor_name: str, num_layers: int) -> float:
    """Position of a tensor in the network in [0, 1]: layer i of L is i/(L-1); tensors outside
    the numbered layers (merge/layers.py) count as 0 if they are input embeddings, else 1
    (final norm, head)."""
    layer = layer_of(tensor_name)
    if layer is None:
        return 0.0 if "embed" in tensor_name else 1.0
    if num_layers <= 1:
        return 0.0
    return min(layer[1] / (num_layers - 1), 1.0)


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


def check_parameter(
    method: MergeMethod, name: str, value: Any, where: str, *, per_model: bool = False
) -> None:
    """One parameter spec of `method`, as its declaration says (methods/registry.py): every
    value the type of the method's default (a number where it wants a number: `density: yes`
    or `density: lots` is refused), depth lists only of numbers, one value for the whole model
    where the method wants one, set per model only where it may be, every number in range."""
    default = method.params[name]
    if per_model and name not in method.per_model:
        raise L2SError(
            f"{where}.{name}: {method.name} takes one {name} for all models, not one per model"
        )
    if name in method.whole_model and isinstance(value, (list, dict)):
        raise L2SError(
            f"{where}.{name}: {method.name} takes one value for the whole model, not a depth "
            "list or name rules"
        )
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
    for x in iter_numbers(value):
        if not math.isfinite(x):
            raise L2SError(f"{where}: {name} = {x} is not a finite number")
        if abs(x) > FLOAT32_MAX:
            raise L2SError(
                f"{where}: {name} = {x:g} is beyond float32's range (±3.4e38), in which "
                "the merge computes"
            )
        if name in method.ranges and x not in method.ranges[name]:
            raise L2SError(f"{where}: {name} = {x} is outside {method.ranges[name]}")


def method_parameters(
    method_name: str, on: str | None, specs: list[tuple[str, dict[str, Any], bool]]
) -> MergeMethod:
    """The one parameter check, made by `merge`, YAML configs and sweep files before any work:
    the method (`on`: the inner method of a wrapper) exists and takes every parameter of
    `specs` (where, parameters, whether they are one model's), each valid. Returns the
    method."""
    from l2smerge.methods import resolve_method

    method = resolve_method(method_name, on)
    for where, params, per_model in specs:
        for name, value in params.items():
            if name not in method.params:
                takes = ", ".join(sorted(method.params)) or "none"
                raise L2SError(
                    f"{where}.{name}: {method.name} has no parameter {name!r} (it takes {takes})"
                )
            check_parameter(method, name, value, where, per_model=per_model)
    return method


class ParameterResolver:
    """Turns the config's parameter specs into plain values for the method: per tensor for
    its function (`resolve`), for the whole merge for its prepare hook (`uniform`,
    `for_models`). A parameter set per model anywhere resolves to a list (one value per
    model, in --model order)."""

    def __init__(self, config: MergeConfig, method: MergeMethod, num_layers: int) -> None:
        self.config = config
        self.defaults = method.params
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

    def uniform(self, name: str) -> Any:
        """The parameter's value when it is one value for every tensor and model (given once,
        or the default); None when it varies by tensor or model."""
        values = self.for_models(name)
        return values[0] if values and all(v == values[0] for v in values[1:]) else None

    def for_models(self, name: str) -> list[Any]:
        """Each model's value (its own, else the shared one, else the default); None for a
        model whose value varies by tensor (a depth list or name rules)."""
        shared = self.config.parameters.get(name, self.defaults[name])
        values = [m.parameters.get(name, shared) for m in self.config.models]
        return [None if isinstance(v, (list, dict)) else v for v in values]

    def _one(self, spec, name, tensor_name, depth, fallback=_NO_MATCH):
        value = _NO_MATCH if spec is _NO_MATCH else resolve_value(spec, tensor_name, depth)
        if value is _NO_MATCH:
            value = fallback if fallback is not _NO_MATCH else self.defaults[name]
        return value


def parameters_of(config: MergeConfig) -> ParameterResolver:
    """The checked parameters of `config` for a prepare hook called outside a merge."""
    return ParameterResolver(config, config.check_parameters(), num_layers=0)
