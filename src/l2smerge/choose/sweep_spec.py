"""SWEEP.yaml: which merges to try and how to evaluate them. docs/sweep.md has the format.

base: models/system1              # relative paths are taken from the sweep file's folder
models: [models/system1, models/system2]
merge: {dtype: float32}           # MergeConfig fields shared by every point
points:                           # an explicit list ...
  - {preset: ties@7b}
  - {method: task_arithmetic, alpha: 0.7}
grid:                             # ... and/or cartesian products (lists are axes)
  - {method: [ties, dare_ties], alpha: [0.7, 1.0], density: 0.2}
search:                           # ... and/or an adaptive search (needs `pip install optuna`)
  method: ties
  params: {alpha: [0.3, 1.3], density: [0.1, 0.9]}
  trials: 12
eval: {benches: [gsm8k, math500], backend: hf, limit: 100, max_tokens: 4096}
reference: {model: models/system2, label: system2}   # or {run: runs/system2}
baselines: [{model: models/system1, label: system1}]
selection: {rule: shortest_noninferior, margin: 2}   # margin in points of accuracy
keep_models: false
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from l2smerge.util.errors import L2SError
from l2smerge.util.paths import resolved
from l2smerge.util.schema import describe_validation_error
from l2smerge.util.yamlfile import read_yaml

# Keys of a point that are not method parameters.
POINT_KEYS = ("method", "on", "preset")
# A grid larger than this is a typo, not a plan (each point is a merge and an evaluation).
MAX_GRID_POINTS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSpec(_Strict):
    benches: list[str] = []
    tasks: list[Path] = []  # free-form task files (docs/tasks.md), beside or instead of benches
    judge: Literal["lexical", "llm"] = "lexical"
    judge_options: dict[str, Any] = {}  # the llm judge's: url, model, api_key_env, ...
    backend: Literal["hf", "vllm", "openai"] = "hf"
    data_dir: Path | None = None
    limit: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    prompt: str = "auto"
    batch_size: int | None = Field(default=None, ge=1)
    device: str | None = None
    # greedy (default) | r1 | {preset, temperature, top_p, seed, samples}: docs/eval.md
    sampling: str | dict[str, Any] | None = None
    options: dict[str, Any] = {}  # extra backend options (e.g. tensor_parallel_size for vllm)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        from l2smerge.util.device import check_device

        try:
            return None if value is None else check_device(value, "device", available=False)
        except L2SError as exc:
            raise ValueError(str(exc).removeprefix("device ")) from None

    @field_validator("benches", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return (
            [b.strip() for b in value.split(",") if b.strip()] if isinstance(value, str) else value
        )

    def model_post_init(self, _: Any) -> None:
        if not self.benches and not self.tasks:
            raise ValueError("give benches (gsm8k, math500, ...) or tasks (task files), or both")


class RunSource(_Strict):
    """A run to compare against: an existing run directory, or a model evaluated with the
    sweep's eval spec."""

    run: Path | None = None
    model: Path | None = None
    label: str | None = None
    prompt: str | None = None  # overrides eval.prompt (e.g. fewshot for a System 1 base)
    max_tokens: int | None = Field(default=None, ge=1)  # overrides eval.max_tokens

    def model_post_init(self, _: Any) -> None:
        if (self.run is None) == (self.model is None):
            raise ValueError("give exactly one of `run` (a run directory) or `model`")

    @property
    def name(self) -> str:
        return self.label or (self.run or self.model).name  # type: ignore[union-attr]


class SearchSpec(_Strict):
    method: str
    on: str | None = None
    params: dict[str, tuple[float, float]]  # name -> [low, high]
    fixed: dict[str, Any] = {}
    trials: int = Field(ge=1)
    seed: int = 0
    decimals: int = Field(default=2, ge=0, le=6)  # suggested values are rounded (stable ids)


class SelectionSpec(_Strict):
    """How the operating point is chosen (l2smerge.choose.selection). Margins are in points
    of accuracy: margin 2 means "shown to lose less than 2 points"."""

    rule: Literal["auto", "shortest_noninferior", "most_accurate"] = "auto"
    # what the rule weighs: accuracy, or key-point coverage of free-form tasks; auto:
    # coverage when the sweep evaluates tasks only (docs/tasks.md)
    metric: Literal["auto", "accuracy", "coverage"] = "auto"
    per_group: bool = False  # also choose a point per task group (coverage)
    margin: float = Field(default=2.0, gt=0, lt=100)
    benchmark_margin: float | None = Field(default=None, gt=0, le=100)  # None: no guard

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("rule") == "shortest_not_worse":
                raise ValueError(
                    "rule: shortest_not_worse was replaced by shortest_noninferior (a point "
                    "must be shown within a margin of the reference, not merely not shown "
                    "worse; see docs/sweep.md); write rule: shortest_noninferior or auto"
                )
            if "alpha" in data:
                raise ValueError(
                    "alpha: the rule no longer uses a p-value; set margin (points of "
                    "accuracy, default 2) instead, see docs/sweep.md"
                )
        return data


class SweepSpec(_Strict):
    base: Path | None = None
    models: list[Path]
    merge: dict[str, Any] = {}
    points: list[dict[str, Any]] = []
    grid: list[dict[str, Any]] = []
    search: SearchSpec | None = None
    eval: EvalSpec
    reference: RunSource | None = None
    baselines: list[RunSource] = []
    selection: SelectionSpec = SelectionSpec()
    keep_models: bool = False
    report: bool = True
    # Set by `resolved`, never written by users: the inputs (absolute) that the sweep file
    # gave as relative paths, so the chosen point's recipe keeps them relative.
    relative_inputs: list[str] = []

    @field_validator("grid", mode="before")
    @classmethod
    def _one_grid(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    def resolved(self, folder: Path) -> SweepSpec:
        """Paths made absolute against `folder` (the sweep file's folder)."""

        relative: list[str] = []

        def fix(p: Path | None) -> Path | None:
            if p is None or p.is_absolute():
                return p
            absolute = resolved(folder / p)
            relative.append(str(absolute))
            return absolute

        def fix_source(s: RunSource | None) -> RunSource | None:
            if s is None:
                return None
            return s.model_copy(update={"run": fix(s.run), "model": fix(s.model)})

        merge = dict(self.merge)
        for key in ("calibration", "tokenizer_from"):
            if merge.get(key) is not None:
                merge[key] = str(fix(Path(merge[key])))
        inputs = {"base": fix(self.base), "models": [fix(m) for m in self.models], "merge": merge}
        recipe_relative = list(relative)  # the inputs of a merge recipe; data paths follow
        return self.model_copy(
            update={
                **inputs,
                "eval": self.eval.model_copy(
                    update={
                        "data_dir": fix(self.eval.data_dir),
                        "tasks": [fix(t) for t in self.eval.tasks],
                    }
                ),
                "reference": fix_source(self.reference),
                "baselines": [fix_source(b) for b in self.baselines],
                "relative_inputs": sorted(set(self.relative_inputs) | set(recipe_relative)),
            }
        )


class Point:
    """One merge configuration of the sweep: method (+ inner method or preset) and params."""

    def __init__(
        self,
        method: str | None,
        parameters: dict[str, Any],
        *,
        on: str | None = None,
        preset: str | None = None,
        source: str = "list",
    ) -> None:
        self.method = method
        self.on = on
        self.preset = preset
        self.parameters = dict(sorted(parameters.items()))
        self.source = source  # "list", "grid" or "search"

    def key(self) -> dict[str, Any]:
        """The point as written (a preset stays a preset): what the merge is built from."""
        return {
            "method": self.method,
            "on": self.on,
            "preset": self.preset,
            "parameters": self.parameters,
        }

    def identity(self) -> dict[str, Any]:
        """What gets merged: a preset expanded into its method and parameters, numbers as
        floats (alpha: 1 is alpha: 1.0). Two points with one identity are one point."""
        method, on, params = self.method, self.on, self.parameters
        if self.preset is not None:
            from l2smerge.merge.presets import apply_preset

            method, on, params = apply_preset(self.preset, method=method, on=on, parameters=params)
        return {
            "method": method,
            "on": on,
            "preset": None,
            "parameters": _canonical(dict(sorted(params.items()))),
        }

    @property
    def id(self) -> str:
        """Stable across runs and spellings: a hash of the identity, so resuming finds finished
        points even if the sweep file lists them in another order or as a preset."""
        identity = self.identity()
        blob = json.dumps(identity, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        name = _label(identity["method"], identity["on"], None, identity["parameters"])
        return f"{_slug(name)}-{digest}"

    @property
    def label(self) -> str:
        return _label(self.method, self.on, self.preset, self.parameters)


def _label(method: str | None, on: str | None, preset: str | None, parameters: dict) -> str:
    name = preset or method or "?"
    if on and not preset:
        name = f"{name}+{on}"
    inner = ",".join(f"{k}={_fmt(v)}" for k, v in parameters.items())
    return f"{name}({inner})" if inner else name


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.@_=-]+", "_", text).strip("_")[:60]


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate SWEEP.yaml; every error names the key at fault."""
    path = Path(path)
    return parse_sweep(read_yaml(path, "sweep file"), path)


def parse_sweep(data: Any, path: str | Path = "sweep") -> SweepSpec:
    """Validate a sweep given as a dict (`path` is used for messages and relative paths)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise L2SError(f"{path}: a sweep file is a YAML mapping (models:, grid:, eval:, ...)")
    if "relative_inputs" in data:
        raise L2SError(f"{path}: relative_inputs: unknown key")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        message = describe_validation_error(exc, data, sorted(SweepSpec.model_fields))
        raise L2SError(f"{path}: {message}") from None
    if not (spec.points or spec.grid or spec.search):
        raise L2SError(f"{path}: points/grid/search: the sweep has no merge to try; add one")
    _check_merge_fields(spec.merge, path)
    if spec.selection.rule == "shortest_noninferior" and spec.reference is None:
        raise L2SError(
            f"{path}: selection.rule: shortest_noninferior needs a reference "
            "(reference: {model: ...} or {run: ...}); add one or use rule: most_accurate"
        )
    free_form = bool(spec.eval.tasks)
    if (spec.selection.metric == "coverage" or spec.selection.per_group) and not free_form:
        raise L2SError(
            f"{path}: selection: coverage (metric: coverage, per_group) needs free-form tasks "
            "(eval.tasks: [FILE.jsonl], docs/tasks.md)"
        )
    if spec.selection.per_group and spec.reference is None:
        raise L2SError(f"{path}: selection.per_group needs a reference to compare each group to")
    spec = spec.resolved(path.parent)
    expand_points(spec, path)  # validates every point now, before any work
    return spec


# MergeConfig fields a sweep sets per point or from base/models, not under merge:
_PER_POINT_FIELDS = {"method", "models", "base", "parameters", "on", "preset"}


def _check_merge_fields(merge: dict[str, Any], path: Path) -> None:
    from l2smerge.merge.config import KNOWN_KEYS, MergeConfig

    for key in merge:
        if key in _PER_POINT_FIELDS:
            raise L2SError(f"{path}: merge.{key}: set it per point or at the top level, not here")
        if key not in KNOWN_KEYS:
            known = ", ".join(sorted(set(KNOWN_KEYS) - _PER_POINT_FIELDS))
            raise L2SError(f"{path}: merge.{key}: unknown key (known: {known})")
    try:  # the values too (dtype, device, seed...), before any point runs
        MergeConfig.from_data({"method": "average", "models": [], **merge})
    except L2SError as exc:
        raise L2SError(f"{path}: merge.{exc}") from None


def expand_points(spec: SweepSpec, path: str | Path = "sweep") -> list[Point]:
    """The listed and grid points, in file order, without duplicates: a preset and the same
    explicit point are one point, listed under the first spelling (search points are
    proposed later, one trial at a time)."""
    points: list[Point] = []
    for i, entry in enumerate(spec.points):
        points.append(_point(entry, f"{path}: points[{i}]", "list"))
    for g, grid in enumerate(spec.grid):
        where = f"{path}: grid[{g}]"
        if not isinstance(grid, dict) or not grid:
            raise L2SError(f"{where}: a grid is a mapping of key -> value or list of values")
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in grid.items()}
        for key, values in axes.items():
            if not values:
                raise L2SError(f"{where}.{key}: empty list of values")
        size = math.prod(len(v) for v in axes.values())
        if size > MAX_GRID_POINTS:
            raise L2SError(
                f"{where}: {size} combinations; a sweep runs at most {MAX_GRID_POINTS} points"
            )
        for combo in itertools.product(*axes.values()):
            points.append(_point(dict(zip(axes, combo, strict=True)), where, "grid"))
    if spec.search is not None:
        _check_method(
            spec.search.method, spec.search.on, spec.search.fixed, f"{path}: search.fixed"
        )
        _check_method(
            spec.search.method,
            spec.search.on,
            {k: list(v) for k, v in spec.search.params.items()},
            f"{path}: search.params",
            search=True,
        )
    if not spec.models:
        raise L2SError(f"{path}: models: the sweep merges no model; list at least one")
    if spec.base is None:
        from l2smerge.methods import resolve_method

        search = [Point(spec.search.method, {}, on=spec.search.on)] if spec.search else []
        for p in points + search:
            identity = p.identity()
            if resolve_method(identity["method"], identity["on"]).needs_base:
                raise L2SError(f"{path}: base: {p.label} needs a base model; add base:")
    unique: dict[str, Point] = {}
    for p in points:
        unique.setdefault(p.id, p)
    return list(unique.values())


def _point(entry: Any, where: str, source: str) -> Point:
    if not isinstance(entry, dict):
        raise L2SError(f"{where}: a point is a mapping (method: ..., alpha: ...)")
    method, on, preset = (entry.get(k) for k in POINT_KEYS)
    for key in POINT_KEYS:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise L2SError(f"{where}.{key}: expected a name, got {entry[key]!r}")
    params = {k: v for k, v in entry.items() if k not in POINT_KEYS}
    for key, value in params.items():
        if isinstance(value, list) and source == "grid":
            raise L2SError(f"{where}.{key}: a grid axis is a list of values, not of lists")
        if isinstance(value, list):
            raise L2SError(f"{where}.{key}: a list here is a grid axis; put it under grid:")
    if preset is not None:
        from l2smerge.merge.presets import PRESETS, apply_preset

        if preset not in PRESETS:
            raise L2SError(f"{where}.preset: unknown preset {preset!r}")
        try:
            applied = apply_preset(preset, method=method, on=on, parameters=params)
        except L2SError as exc:
            raise L2SError(f"{where}.method: {exc}") from None
        _check_method(*applied, where)
    elif method is None:
        raise L2SError(f"{where}.method: required (or give a preset)")
    else:
        _check_method(method, on, params, where)
    return Point(method, params, on=on, preset=preset, source=source)


def _check_method(
    method: str, on: str | None, params: dict[str, Any], where: str, search: bool = False
) -> None:
    """The method exists and takes these parameters, each valid: the check a merge makes
    (merge/parameters.py), so a bad value fails before any point runs. `search`: each value
    is a [low, high] range, checked at both ends."""
    from l2smerge.merge.parameters import method_parameters
    from l2smerge.methods import METHODS, resolve_method
    from l2smerge.methods.registry import known_methods

    if method not in METHODS:
        raise L2SError(f"{where}.method: unknown method {method!r}; known: {known_methods()}")
    if on is not None:
        if not isinstance(on, str) or on not in METHODS:
            raise L2SError(f"{where}.on: unknown method {on!r}")
        try:
            resolve_method(method, on)
        except L2SError as exc:
            raise L2SError(f"{where}.on: {exc}") from None
    ends = [0, 1] if search else [None]
    for end in ends:
        values = {k: v if end is None else v[end] for k, v in params.items() if v is not None}
        method_parameters(method, on, [(where, values, False)])


def merge_config(spec: SweepSpec, key: dict[str, Any]):
    """The MergeConfig of one point (`Point.key()` or a points.jsonl record) of `spec`."""
    from l2smerge.merge.config import MergeConfig

    return MergeConfig.build(
        method=key["method"],
        models=spec.models,
        base=spec.base,
        parameters=key["parameters"],
        preset=key["preset"],
        # on=None would stop a preset from setting its inner method (aim_ties@7b)
        **({"on": key["on"]} if key["on"] else {}),
        **spec.merge,
    )
