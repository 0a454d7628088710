"""MergeConfig: everything one merge needs, as YAML or built from command-line options.

Any method parameter may be
  * a scalar:                         alpha: 0.7
  * a list interpolated over depth:   alpha: [0.5, 1.0]      (first layer -> last layer)
  * name rules (glob, first match):   alpha: {"*self_attn*": 0.5, "*mlp*": [0.6, 0.9], "*": 0.7}
and may be set for all models (`parameters:`) or for one model (its entry's `parameters:`).
docs/merge.md describes the format with examples.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

from l2smerge.util.errors import L2SError

Scalar = Union[bool, int, float, str]  # noqa: UP007 (pydantic reads this union at runtime)
Schedule = list[float]
ParamValue = Union[Scalar, Schedule, dict[str, Union[Scalar, Schedule]]]  # noqa: UP007

# Valid ranges of the shared parameters, checked before any tensor is read.
PARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    # name: (low, high, high_inclusive)
    "density": (0.0, 1.0, True),
    "drop_rate": (0.0, 1.0, False),
    "omega": (0.0, 1.0, True),
}

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path
    parameters: dict[str, ParamValue] = {}
    calibration: Path | None = None  # this model's calibration data (Sens), else the shared


class MergeConfig(BaseModel):
    """One merge. Paths are absolute once loaded (relative YAML paths are taken from the
    YAML file's folder)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    models: list[ModelEntry]
    base: Path | None = None
    parameters: dict[str, ParamValue] = {}
    on: str | None = None  # inner method for methods that wrap another (`aim --on ties`)
    calibration: Path | None = None
    seed: int = 0
    dtype: Literal["bfloat16", "float16", "float32"] | None = None  # None: the base's
    device: str = "cpu"
    tokenizer_from: Path | None = None  # None: the base (or the first model without one)
    max_shard_size: str = "5GB"
    allow_pickle: bool = False
    preset: str | None = None  # recorded only; its settings are already in the fields
    # Set when the YAML was a mergekit recipe: what its translation could not keep exactly.
    _mergekit_notes: list[str] | None = PrivateAttr(default=None)

    @field_validator("models", mode="before")
    @classmethod
    def _plain_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, (str, Path)) else v for v in value]
        return value

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        method: str | None = None,
        models: list[str | Path],
        base: str | Path | None = None,
        parameters: dict[str, Any] | None = None,
        preset: str | None = None,
        model_calibration: list[str | Path | None] | None = None,
        **fields: Any,
    ) -> MergeConfig:
        """From command-line style options. A per-model list for a parameter (`alpha` given
        as [0.7, 0.3] with two models) goes into the model entries; a preset fills in the
        method and every parameter not given explicitly (a None in a per-model list leaves
        that model at the shared value). `model_calibration` gives each model its own
        calibration file (None: the shared `calibration`)."""
        params = {k: v for k, v in (parameters or {}).items() if v is not None}
        if preset is not None:
            from l2smerge.merge.presets import get_preset

            spec = get_preset(preset)
            if method is not None and method != spec["method"]:
                raise L2SError(
                    f"--method {method} conflicts with --preset {preset} "
                    f"(which is {spec['method']}); drop one of them"
                )
            method = spec["method"]
            if spec.get("on") and fields.get("on") is None:
                fields["on"] = spec["on"]
            params = {**spec["parameters"], **params}
        if method is None:
            raise L2SError("no merge method: pass --method NAME or --preset NAME")
        entries: list[dict[str, Any]] = [{"path": Path(m), "parameters": {}} for m in models]
        shared: dict[str, Any] = {}
        for name, value in params.items():
            if isinstance(value, (list, tuple)):
                if len(value) == 1:
                    value = value[0]
                elif len(value) != len(entries):
                    raise L2SError(
                        f"--{name.replace('_', '-')}: {len(value)} values for "
                        f"{len(entries)} models; give one value or one per --model"
                    )
                else:
                    for entry, v in zip(entries, value, strict=True):
                        if v is not None:
                            entry["parameters"][name] = v
                    continue
            shared[name] = value
        if model_calibration is not None:
            if len(model_calibration) != len(entries):
                raise L2SError(
                    f"{len(model_calibration)} calibration files for {len(entries)} models"
                )
            for entry, file in zip(entries, model_calibration, strict=True):
                if file is not None:
                    entry["calibration"] = Path(file)
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            return cls(
                method=method,
                models=entries,
                base=Path(base) if base is not None else None,
                parameters=shared,
                preset=preset,
                **fields,
            )
        except ValidationError as exc:
            raise L2SError(f"bad merge options: {_first_error(exc)}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise L2SError(f"{path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise L2SError(f"{path}:{where}: invalid YAML ({problem})") from exc
        if not isinstance(data, dict):
            raise L2SError(f"{path}: a merge config is a YAML mapping (method:, models:, ...)")
        from l2smerge.merge import mergekit

        if mergekit.is_mergekit_recipe(data):  # mergekit's format: read as what it means there
            translation = mergekit.from_mergekit(data, path)
            translation.config._mergekit_notes = translation.notes
            return translation.config
        if "preset" in data and data["preset"] is not None:
            from l2smerge.merge.presets import get_preset

            spec = get_preset(data["preset"])
            if data.setdefault("method", spec["method"]) != spec["method"]:
                raise L2SError(
                    f"{path}: method {data['method']!r} conflicts with preset "
                    f"{data['preset']!r} (which is {spec['method']}); drop one of them"
                )
            if spec.get("on"):
                data.setdefault("on", spec["on"])
            data["parameters"] = {**spec["parameters"], **(data.get("parameters") or {})}
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise L2SError(f"{path}: {_first_error(exc)}") from exc
        return config.relative_to(path.parent)

    def relative_to(self, folder: Path) -> MergeConfig:
        """Resolve relative paths against `folder` (the YAML file's folder)."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (folder / p)).resolve()

        return self.model_copy(
            update={
                "base": fix(self.base),
                "models": [
                    m.model_copy(update={"path": fix(m.path), "calibration": fix(m.calibration)})
                    for m in self.models
                ],
                "calibration": fix(self.calibration),
                "tokenizer_from": fix(self.tokenizer_from),
            }
        )

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        data["models"] = [
            m["path"] if not m["parameters"] and "calibration" not in m else m
            for m in data["models"]
        ]
        return yaml.safe_dump(data, sort_keys=False)

    # -- views ------------------------------------------------------------------------------
    @property
    def mergekit_notes(self) -> list[str] | None:
        """None, or (for a config read from a mergekit recipe) the translation's notes."""
        return self._mergekit_notes

    @property
    def model_paths(self) -> list[Path]:
        return [m.path for m in self.models]

    @property
    def config_source(self) -> Path:
        """The input whose config.json, generation config and tokenizer the output gets."""
        if self.tokenizer_from is not None:
            return self.tokenizer_from
        return self.base if self.base is not None else self.models[0].path


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "config"
    return f"{where}: {err['msg']}"


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


def iter_numbers(value: Any):
    if isinstance(value, dict):
        for inner in value.values():
            yield from iter_numbers(inner)
    elif isinstance(value, list):
        yield from value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def check_range(name: str, value: Any, where: str) -> None:
    for x in iter_numbers(value):
        if not math.isfinite(x):
            raise L2SError(f"{where}: {name} = {x} is not a finite number")
    if name not in PARAM_RANGES:
        return
    low, high, high_inclusive = PARAM_RANGES[name]
    for x in iter_numbers(value):
        if x < low or x > high or (x == high and not high_inclusive):
            bracket = "]" if high_inclusive else ")"
            raise L2SError(f"{where}: {name} = {x} is outside [{low}, {high}{bracket}")


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
