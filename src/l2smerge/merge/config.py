"""MergeConfig: everything one merge needs, as YAML or built from command-line options.

Any method parameter may be
  * a scalar:                         alpha: 0.7
  * a list interpolated over depth:   alpha: [0.5, 1.0]      (first layer -> last layer)
  * name rules (glob, first match):   alpha: {"*self_attn*": 0.5, "*mlp*": [0.6, 0.9], "*": 0.7}
and may be set for all models (`parameters:`) or for one model (its entry's `parameters:`).
docs/merge.md describes the format with examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from l2smerge.util.device import check_device
from l2smerge.util.errors import L2SError
from l2smerge.util.paths import resolved
from l2smerge.util.schema import describe_validation_error
from l2smerge.util.yamlfile import read_yaml

if TYPE_CHECKING:
    from l2smerge.methods import MergeMethod

# Values are kept as written (strict: no "0.5" -> 0.5, no yes -> 1); whether a parameter
# wants a number, a whole number or text is checked against the method's defaults.
Number = Union[StrictInt, StrictFloat]  # noqa: UP007 (pydantic reads these unions at runtime)
Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]  # noqa: UP007
Schedule = list[Number]
ParamValue = Union[Scalar, Schedule, dict[str, Union[Scalar, Schedule]]]  # noqa: UP007


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path
    parameters: dict[str, ParamValue] = {}
    calibration: Path | None = None  # this model's calibration data (Sens), else the shared


# How a merge runs, not what it makes: the same recipe gives the same weights with any of
# these, so they are never saved in merge.yaml (a recipe made on a GPU reruns on a CPU).
RUN_OPTIONS = ("device", "max_shard_size", "allow_pickle")


class MergeOptions(BaseModel):
    """Run options of a merge: where the math runs, how the output is sharded, whether
    pickle checkpoints may be read."""

    model_config = ConfigDict(extra="forbid")

    device: StrictStr = "cpu"
    max_shard_size: StrictStr | StrictInt = "5GB"
    allow_pickle: StrictBool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        try:
            return check_device(value, "device", available=False)
        except L2SError as exc:
            raise ValueError(str(exc).removeprefix("device ")) from None

    @field_validator("max_shard_size")
    @classmethod
    def _shard_size(cls, value: str | int) -> str | int:
        from l2smerge.merge.checkpoint import parse_size

        try:
            parse_size(value)
        except L2SError as exc:
            raise ValueError(str(exc)) from None
        return value


class MergeConfig(BaseModel):
    """One merge: the recipe (methods, models, parameters, output dtype), which merge.yaml
    saves, and its run `options`, which it does not. Paths are absolute once loaded (relative
    YAML paths are taken from the YAML file's folder)."""

    model_config = ConfigDict(extra="forbid")

    method: StrictStr
    models: list[ModelEntry]
    base: Path | None = None
    parameters: dict[str, ParamValue] = {}
    on: StrictStr | None = None  # inner method for methods that wrap another (`aim --on ties`)
    calibration: Path | None = None
    seed: StrictInt = 0
    dtype: Literal["bfloat16", "float16", "float32"] | None = None  # None: the base's
    tokenizer_from: Path | None = None  # None: the base (or the first model without one)
    preset: StrictStr | None = None  # recorded only; its settings are already in the fields
    options: MergeOptions = Field(default_factory=MergeOptions, exclude=True)
    # Set when the YAML was a mergekit recipe: what its translation could not keep exactly.
    _mergekit_notes: list[str] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _run_options_given_flat(cls, data: Any) -> Any:
        """Run options written beside the recipe (older merge.yaml files, sweep `merge:`
        blocks, keyword arguments) go into `options`."""
        if isinstance(data, dict) and any(k in data for k in RUN_OPTIONS):
            data = dict(data)
            given = data.get("options") or {}
            if isinstance(given, MergeOptions):
                given = given.model_dump()
            data["options"] = {**given, **{k: data.pop(k) for k in RUN_OPTIONS if k in data}}
        return data

    @field_validator("models", mode="before")
    @classmethod
    def _plain_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, (str, Path)) else v for v in value]
        return value

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int) -> int:
        if not 0 <= value < 2**32:
            raise ValueError(f"{value} is outside 0 .. 2**32 - 1")
        return value

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> MergeConfig:
        """Validate a config given as plain data, run options at the top level; a problem is
        an L2SError naming the key as written."""
        options = {k: data[k] for k in RUN_OPTIONS if k in data}
        recipe = {k: v for k, v in data.items() if k not in RUN_OPTIONS}
        try:
            checked = MergeOptions.model_validate(options)
        except ValidationError as exc:
            raise L2SError(describe_validation_error(exc, options)) from None
        try:
            return cls.model_validate({**recipe, "options": checked})
        except ValidationError as exc:
            raise L2SError(describe_validation_error(exc, recipe, KNOWN_KEYS)) from None

    def with_options(self, **options: Any) -> MergeConfig:
        """The same recipe with some run options replaced (None: keep)."""
        given = {k: v for k, v in options.items() if v is not None}
        try:
            checked = MergeOptions.model_validate({**self.options.model_dump(), **given})
        except ValidationError as exc:
            raise L2SError(f"bad merge options: {describe_validation_error(exc, given)}") from None
        return self.model_copy(update={"options": checked})

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
            from l2smerge.merge.presets import apply_preset

            method, fields["on"], params = apply_preset(
                preset, method=method, on=fields.get("on"), parameters=params,
                words=("--method", "--preset"),
            )  # fmt: skip
        if method is None:
            raise L2SError("no merge method: pass --method NAME or --preset NAME")
        entries, shared = _model_entries(models, params, model_calibration)
        fields = {k: v for k, v in fields.items() if v is not None}
        data = dict(
            method=method,
            models=entries,
            base=Path(base) if base is not None else None,
            parameters=shared,
            preset=preset,
            **fields,
        )
        try:
            config = cls.from_data(data)
        except L2SError as exc:
            raise L2SError(f"bad merge options: {exc}") from None
        config.check_parameters()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        data = read_yaml(path, "merge config")
        if not isinstance(data, dict):
            raise L2SError(f"{path}: a merge config is a YAML mapping (method:, models:, ...)")
        from l2smerge.merge import mergekit

        if mergekit.is_mergekit_recipe(data):  # mergekit's format: read as what it means there
            translation = mergekit.from_mergekit(data, path)
            translation.config._mergekit_notes = translation.notes
            return translation.config
        if data.get("preset") is not None:
            data = _with_preset(data, path)
        try:
            config = cls.from_data(data)
        except L2SError as exc:
            raise L2SError(f"{path}: {exc}") from None
        try:
            config.check_parameters()
        except L2SError as exc:
            raise L2SError(f"{path}: {exc}") from None
        return config.relative_to(path.parent)

    def check_parameters(self) -> MergeMethod:
        """The method exists and takes every parameter given, each valid (merge/parameters.py).
        Returns the method."""
        from l2smerge.merge.parameters import method_parameters

        return method_parameters(
            self.method,
            self.on,
            [("parameters", self.parameters, False)]
            + [(f"models[{i}].parameters", m.parameters, True) for i, m in enumerate(self.models)],
        )

    def relative_to(self, folder: Path) -> MergeConfig:
        """Resolve relative paths against `folder` (the YAML file's folder)."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else resolved(p if p.is_absolute() else folder / p)

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
        """The recipe as YAML (merge.yaml): no run options."""
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


def _with_preset(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A YAML config's data with its preset applied (presets.apply_preset)."""
    from l2smerge.merge.presets import apply_preset

    if not isinstance(data["preset"], str):
        raise L2SError(f"{path}: preset: expected a preset name, got {data['preset']!r}")
    given = data.get("parameters") or {}
    if not isinstance(given, dict):
        raise L2SError(f"{path}: parameters: expected a mapping, got {given!r}")
    try:
        method, on, parameters = apply_preset(
            data["preset"], method=data.get("method"), on=data.get("on"), parameters=given
        )
    except L2SError as exc:
        raise L2SError(f"{path}: {exc}") from None
    return {**data, "method": method, "parameters": parameters, **({"on": on} if on else {})}


def _model_entries(
    models: list[str | Path],
    params: dict[str, Any],
    model_calibration: list[str | Path | None] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The model entries (each with its own parameters and calibration file) and the shared
    parameters, from command-line style values: a list for a parameter is one value per
    model (a None leaves that model at the shared value)."""
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
            raise L2SError(f"{len(model_calibration)} calibration files for {len(entries)} models")
        for entry, file in zip(entries, model_calibration, strict=True):
            if file is not None:
                entry["calibration"] = Path(file)
    return entries, shared


# The keys a merge config may have at the top level: the recipe's and the run options.
KNOWN_KEYS = sorted({*MergeConfig.model_fields, *RUN_OPTIONS} - {"options"})
