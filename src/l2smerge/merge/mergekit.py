"""mergekit recipes: read mergekit's YAML as the l2smerge recipe it means, and write an
l2smerge recipe as mergekit YAML where mergekit can express it.

The semantics are mergekit 0.1.5's (config.py evaluate_setting, parameter_resolver.py,
plan.py, merge_methods/linear.py and generalized_task_arithmetic.py, sparsify.py):

- `weight` is per model and required; `linear` divides by Σ weight (`normalize`, default
  true); the task-vector methods multiply each δk by its weight, sum (TIES/DARE-TIES: the
  entries agreeing with the elected sign), divide by the summed weights when `normalize`
  (default true for `ties`, false otherwise) and multiply by `lambda` (default 1).
- `density` is the fraction kept: by magnitude in `ties` (exactly max(1, ⌊density·n⌋)
  entries), at random in `dare_*` (the keep probability, so drop_rate = 1 − density).
- `rescale` (default true for `dare_*`) scales the survivors to the tensor's L1 norm.
- A gradient (list of numbers) is interpolated over the decoder layers, layer i of L at
  t = i/(L − 1) (t = 1 when L = 1); every tensor outside the layers (embeddings, final norm,
  LM head) gets t = 0, the list's first value.
- `filter` rules are tried in order; a rule applies when its filter is a substring of the
  tensor name (no filter, or "*", matches all); when none applies the value falls back to
  the top-level `parameters:`, then to the method's default.
- `int8_mask` only sets the dtype of the sign mask: it changes no value.

docs/merge.md "Coming from mergekit" lists every key and how it is translated.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import TypeAdapter, ValidationError

from l2smerge.merge.config import MergeConfig, ModelEntry
from l2smerge.merge.layers import layer_of
from l2smerge.merge.parameters import layer_depth
from l2smerge.util.errors import L2SError

# mergekit merge_method -> l2smerge method
MERGEKIT_METHODS = {
    "linear": "average",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare_ties": "dare_ties",
    "dare_linear": "dare_ta",
}
TO_MERGEKIT = {ours: theirs for theirs, ours in MERGEKIT_METHODS.items()}
NO_MERGEKIT_EQUIVALENT = {
    "lore": "LoRE-Merging's low-rank estimation",
    "twin": "Twin-Merging's SVD of the exclusive parts",
    "aim": "AIM's activation-informed shrinking",
    "sens": "Sens-Merging's sensitivity-weighted coefficients",
}

REQUIRED = object()
_NUMBER = TypeAdapter(float)
_FLAG = TypeAdapter(bool)


@dataclass(frozen=True)
class MergekitParameter:
    kind: str  # "number" or "flag"
    shared: bool  # read from the top-level `parameters:` only (a per-model value is ignored)
    default: Any  # mergekit's default, or REQUIRED


def _task_vector_parameters(normalize: bool, rescale: bool) -> dict[str, MergekitParameter]:
    return {
        "weight": MergekitParameter("number", False, REQUIRED),
        "density": MergekitParameter("number", False, 1.0),
        "lambda": MergekitParameter("number", True, 1.0),
        "normalize": MergekitParameter("flag", True, normalize),
        "rescale": MergekitParameter("flag", True, rescale),
        "int8_mask": MergekitParameter("flag", True, False),
    }


MERGEKIT_PARAMETERS: dict[str, dict[str, MergekitParameter]] = {
    "linear": {
        "weight": MergekitParameter("number", False, REQUIRED),
        "normalize": MergekitParameter("flag", True, True),
    },
    "task_arithmetic": _task_vector_parameters(normalize=False, rescale=False),
    "ties": _task_vector_parameters(normalize=True, rescale=False),
    "dare_ties": _task_vector_parameters(normalize=False, rescale=True),
    "dare_linear": _task_vector_parameters(normalize=False, rescale=True),
}
TOP_LEVEL_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
}
WHY_NOT = {
    "slices": "layer ranges (write the merge with `models:`)",
    "modules": "per-module merges",
    "chat_template": "l2smerge copies the chat template of --tokenizer-from",
    "gamma": "breadcrumbs is not supported",
    "epsilon": "della is not supported",
}
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


def is_mergekit_recipe(data: dict) -> bool:
    """mergekit's format names its method `merge_method`; ours names it `method`."""
    return "merge_method" in data and "method" not in data


def glob_escape(text: str) -> str:
    """`text` as a glob that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


# -- a mergekit parameter setting, parsed ------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One mergekit parameter setting: a scalar, a gradient, or filter rules in order
    (filter None matches every tensor)."""

    scalar: Any = None
    gradient: list[float] | None = None
    rules: list[tuple[str | None, Setting]] | None = None

    @property
    def covers_all(self) -> bool:
        return self.rules is None or any(f is None for f, _ in self.rules)

    def numbers(self) -> list[float]:
        if self.rules is not None:
            return [x for _, s in self.rules for x in s.numbers()]
        return list(self.gradient) if self.gradient is not None else [self.scalar]

    def map(self, fn) -> Setting:
        if self.rules is not None:
            return Setting(rules=[(f, s.map(fn)) for f, s in self.rules])
        if self.gradient is not None:
            return Setting(gradient=[fn(x) for x in self.gradient])
        return Setting(scalar=fn(self.scalar))

    def applies(self, tensor_name: str) -> Setting | None:
        """The setting this tensor gets (None: no rule applies)."""
        if self.rules is None:
            return self
        for filt, inner in self.rules:
            if filt is None or filt in tensor_name:
                return inner
        return None


def _scalar(value: Any, kind: str, where: str) -> Any:
    try:
        return (_NUMBER if kind == "number" else _FLAG).validate_python(value)
    except ValidationError:
        expected = "a number" if kind == "number" else "true or false"
        raise L2SError(f"{where}: {value!r} is not {expected}") from None


def parse_setting(value: Any, kind: str, where: str, *, nested: bool = False) -> Setting:
    """A mergekit ParameterSetting: scalar | list of scalars | {filter, value} | list of those."""
    if isinstance(value, dict):
        value = [value]  # mergekit 0.1.5 reads one condition as a list of one
    if isinstance(value, (bool, int, float, str)):
        return Setting(scalar=_scalar(value, kind, where))
    if not isinstance(value, list) or not value:
        raise L2SError(f"{where}: expected a value, a list (gradient) or filter rules")
    if all(isinstance(e, (bool, int, float, str)) for e in value):
        if kind == "flag":
            raise L2SError(
                f"{where}: a list of true/false over the layers is not supported; give one "
                "value, or filter rules"
            )
        numbers = [_scalar(e, kind, f"{where}[{i}]") for i, e in enumerate(value)]
        return Setting(scalar=numbers[0]) if len(numbers) == 1 else Setting(gradient=numbers)
    if nested or not all(isinstance(e, dict) for e in value):
        raise L2SError(f"{where}: mixes filter rules with plain values")
    rules: list[tuple[str | None, Setting]] = []
    for i, rule in enumerate(value):
        extra = sorted(set(rule) - {"filter", "value"})
        if extra or "value" not in rule:
            what = f"unknown key {extra[0]!r}" if extra else "no `value`"
            raise L2SError(f"{where}[{i}]: a filter rule has `filter` and `value` ({what})")
        filt = rule.get("filter")
        if filt is not None and not isinstance(filt, str):
            raise L2SError(f"{where}[{i}].filter: {filt!r} is not a string")
        inner = parse_setting(rule["value"], kind, f"{where}[{i}].value", nested=True)
        rules.append((None if filt in (None, "*", "") else filt, inner))
    return Setting(rules=rules)


# -- the models' tensor layout (only opened when a gradient or filter needs it) ---------------


class Layout:
    """Tensor names and layer count of the inputs, read from their headers when first needed."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    @cached_property
    def _checkpoints(self):
        from l2smerge.merge.checkpoint import Checkpoint

        return [Checkpoint(p) for p in self.paths]

    @property
    def first(self):
        """The base (or the first model): the checkpoint whose layout the output follows."""
        return self._checkpoints[0]

    @cached_property
    def names(self) -> list[str]:
        return list(dict.fromkeys(n for c in self._checkpoints for n in c.names()))

    @cached_property
    def num_layers(self) -> int:
        from l2smerge.merge.executor import _num_layers

        return _num_layers(self.first)

    @cached_property
    def outside_layers(self) -> list[str]:
        return [n for n in self.names if layer_of(n) is None]


def _gradient_rules(
    gradient: list[float], matching: list[str], layout: Layout
) -> tuple[dict[str, float], float | list[float]]:
    """l2smerge rules for a mergekit gradient: exact-name rules for the tensors (among
    `matching`) where l2smerge's layer depth would not give mergekit's t, and the value for
    everything else."""
    layers_value: float | list[float] = gradient
    if layout.num_layers <= 1:  # mergekit: t = 1 for a lone layer; l2smerge: depth 0
        layers_value = gradient[-1]
    exact = {
        name: gradient[0]
        for name in matching
        if layer_of(name) is None
        and (layout.num_layers <= 1 or layer_depth(name, layout.num_layers) != 0.0)
    }
    return exact, layers_value


def to_l2smerge(setting: Setting, layout: Layout, fallback: Any = None) -> Any:
    """An l2smerge parameter value meaning what `setting` means in mergekit. `fallback`
    (when not None) is what a tensor no rule matches gets in mergekit."""
    if setting.rules is None and setting.gradient is None:
        return setting.scalar
    if setting.rules is None:
        assert setting.gradient is not None
        exact, rest = _gradient_rules(setting.gradient, layout.outside_layers, layout)
        return {**exact, "*": rest} if exact else rest
    out: dict[str, Any] = {}
    claimed: set[str] = set()  # outside-layer tensors an earlier rule already matches
    for filt, inner in setting.rules:
        pattern = "*" if filt is None else f"*{glob_escape(filt)}*"
        if inner.gradient is not None:
            matching = [
                n for n in layout.outside_layers if n not in claimed and (filt is None or filt in n)
            ]
            exact, value = _gradient_rules(inner.gradient, matching, layout)
            for name, v in exact.items():
                out.setdefault(name, v)
        else:
            value = inner.scalar
        out.setdefault(pattern, value)
        if filt is None:
            return out
        if layout.outside_layers and any(filt in n for n in layout.outside_layers):
            claimed |= {n for n in layout.outside_layers if filt in n}
    if fallback is not None:
        out["*"] = fallback
    return out


# -- mergekit -> l2smerge ----------------------------------------------------------------------


@dataclass
class Translation:
    config: MergeConfig
    notes: list[str] = field(default_factory=list)


def _model_path(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise L2SError(f"{where}: expected a model path (a string)")
    if "+" in value:
        raise L2SError(f"{where}: {value!r} names a LoRA (model+lora); merge it first")
    if "@" in value:
        raise L2SError(f"{where}: {value!r} names a Hub revision; download it to a folder first")
    return Path(value).expanduser().resolve()  # mergekit reads relative paths from the cwd


def _dtype(value: Any, where: str) -> str:
    name = (
        value[len("torch.") :] if isinstance(value, str) and value.startswith("torch.") else value
    )
    if name not in COMPUTE_DTYPES:
        raise L2SError(f"{where}: {value!r}; l2smerge supports {', '.join(COMPUTE_DTYPES)}")
    return name


def _why_not(key: str) -> str:
    return f" ({WHY_NOT[key]})" if key in WHY_NOT else ""


def _merge_method(data: dict, path: Path) -> str:
    method = data.get("merge_method")
    if method not in MERGEKIT_METHODS:
        raise L2SError(
            f"{path}: merge_method {method!r} has no l2smerge equivalent "
            f"(supported: {', '.join(MERGEKIT_METHODS)})"
        )
    return method


def _parameters_and_models(data: dict, path: Path) -> tuple[dict, list[dict]]:
    """The top-level `parameters:` and the `models:` entries, checked for shape."""
    top = data.get("parameters") or {}
    models = data.get("models")
    if not isinstance(top, dict):
        raise L2SError(f"{path}: parameters: expected a mapping of parameter names to values")
    if not isinstance(models, list) or not models:
        if "slices" not in data and "modules" not in data:
            raise L2SError(f"{path}: models: expected a list of `- model: PATH` entries")
        models = []
    for i, entry in enumerate(models):
        if not isinstance(entry, dict) or "model" not in entry:
            raise L2SError(f"{path}: models[{i}]: expected `model: PATH` (and `parameters:`)")
    return top, models


def _refuse_unhonoured_keys(
    data: dict, path: Path, spec: dict[str, MergekitParameter], top: dict, models: list[dict]
) -> None:
    """One error listing every key l2smerge would otherwise have to ignore."""
    refused = [
        f"{k} ({WHY_NOT[k]})" if k in WHY_NOT else k for k in data if k not in TOP_LEVEL_KEYS
    ]
    refused += [f"parameters.{name}{_why_not(name)}" for name in top if name not in spec]
    for i, entry in enumerate(models):
        refused += [f"models[{i}].{k}" for k in entry if k not in ("model", "parameters")]
        for name in entry.get("parameters") or {}:
            if name not in spec:
                refused.append(f"models[{i}].parameters.{name}{_why_not(name)}")
            elif spec[name].shared:
                refused.append(
                    f"models[{i}].parameters.{name} (mergekit reads {name} only from the "
                    "top-level parameters)"
                )
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and (not isinstance(tokenizer, dict) or set(tokenizer) != {"source"}):
        refused.append("tokenizer (only `tokenizer: {source: ...}` is supported)")
    if data.get("tokenizer_source") == "union" or (
        isinstance(tokenizer, dict) and tokenizer.get("source") == "union"
    ):
        refused.append("tokenizer_source: union (l2smerge takes one input's tokenizer)")
    if refused:
        raise L2SError(f"{path}: mergekit keys l2smerge cannot honour: {', '.join(refused)}")


class _Input(NamedTuple):
    """A model mergekit merges: its name in the recipe, its folder, its `parameters:`."""

    label: str
    path: Path
    parameters: dict


def _inputs(
    data: dict, path: Path, method: str, models: list[dict]
) -> tuple[Path | None, list[_Input]]:
    """The base model's folder (None without one) and the models merged, as mergekit merges
    them: the base gives no task vector, but `linear` merges it like any input."""
    base = data.get("base_model")
    base_path = _model_path(base, f"{path}: base_model") if base is not None else None
    if base_path is None and method != "linear":
        raise L2SError(f"{path}: merge_method {method} needs a base_model")
    names = [entry["model"] for entry in models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise L2SError(f"{path}: models[{i}]: {name!r} is listed twice")
    inputs = [
        _Input(
            str(e["model"]),
            _model_path(e["model"], f"{path}: models[{i}].model"),
            e.get("parameters") or {},
        )
        for i, e in enumerate(models)
    ]
    if method != "linear":  # the base gives no task vector (mergekit skips it)
        inputs = [e for e in inputs if e.label != base]
        if not inputs:
            raise L2SError(f"{path}: no model to merge besides base_model")
    elif base is not None and base not in names:
        inputs.append(_Input(str(base), base_path, {}))  # mergekit merges it like any input
    return base_path, inputs


def _parse_settings(
    path: Path, spec: dict[str, MergekitParameter], top: dict, inputs: list[_Input]
) -> tuple[dict[str, Setting], list[dict[str, Setting]]]:
    """The top-level settings and each input's own, parsed."""
    given = {
        name: parse_setting(v, spec[name].kind, f"{path}: parameters.{name}")
        for name, v in top.items()
    }
    per_model = [
        {
            name: parse_setting(v, spec[name].kind, f"{path}: models[{i}].parameters.{name}")
            for name, v in model.parameters.items()
        }
        for i, model in enumerate(inputs)
    ]
    return given, per_model


@dataclass
class _TranslatedParameters:
    """l2smerge parameters, shared and per model, filled from mergekit settings."""

    spec: dict[str, MergekitParameter]
    given: dict[str, Setting]  # mergekit's top-level settings
    per_model: list[dict[str, Setting]]  # mergekit's settings of each input
    layout: Layout
    shared: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.models = [{} for _ in self.per_model]

    def put(self, our_name: str, mk_name: str, convert=None) -> None:
        """Translate mergekit's `mk_name` (top level and per model) into our `our_name`."""
        mk = self.spec[mk_name]
        default = None if mk.default is REQUIRED else mk.default
        if convert is not None and default is not None:
            default = convert(default)
        if mk_name in self.given:
            given = self.given[mk_name]
            setting = given if convert is None else given.map(convert)
            self.shared[our_name] = to_l2smerge(
                setting, self.layout, default if not setting.covers_all else None
            )
        elif default is not None:
            self.shared[our_name] = default
        for i, params in enumerate(self.per_model):
            if mk_name in params:
                setting = params[mk_name] if convert is None else params[mk_name].map(convert)
                self.models[i][our_name] = to_l2smerge(setting, self.layout)


def _translate_parameters(method: str, path: Path, ours: _TranslatedParameters) -> list[str]:
    """Fill `ours` with what mergekit's `method` reads from its settings; returns notes on
    what differs."""
    given, per_model = ours.given, ours.per_model
    dare = method.startswith("dare")
    notes: list[str] = []
    ours.put("weight", "weight")
    ours.put("normalize", "normalize")
    if method != "linear":
        ours.put("alpha", "lambda")
        if "int8_mask" in given:
            notes.append("int8_mask only sets the dtype of mergekit's sign mask: no effect")
    if method == "task_arithmetic":
        ignored = [
            k for k in ("density", "rescale") if k in given or any(k in p for p in per_model)
        ]
        if ignored:
            notes.append(f"{' and '.join(ignored)}: no effect in task_arithmetic (as in mergekit)")
    if method == "ties":
        _check_density(path, given, per_model, low=0.0, high=1.0)
        ours.put("density", "density")
        ours.put("rescale", "rescale", lambda on: "l1" if on else "none")
        ours.shared["tie_break"] = "mergekit"
    if dare:
        _check_density(path, given, per_model, low=0.0, high=1.0, low_open=True)
        ours.put("drop_rate", "density", lambda keep: 1.0 - keep)
        ours.put("rescale", "rescale", lambda on: "l1" if on else "none")
    if method == "dare_ties":
        ours.shared["density"] = 1.0  # no magnitude trim after DARE in mergekit's dare_ties
        ours.shared["tie_break"] = "mergekit"
    if dare:
        notes.append(
            "DARE masks are drawn from l2smerge's generator (seed 0, reproducible per tensor), "
            "not mergekit's: the same distribution, other masks"
        )
    return notes


def _dtypes(data: dict, path: Path) -> tuple[str | None, str | None]:
    """mergekit's `dtype` (its compute dtype) and `out_dtype`, None where not given."""
    dtype = _dtype(data["dtype"], f"{path}: dtype") if data.get("dtype") is not None else None
    out_dtype = (
        _dtype(data["out_dtype"], f"{path}: out_dtype")
        if data.get("out_dtype") is not None
        else None
    )
    return dtype, out_dtype


def _tokenizer_source(data: dict, path: Path) -> Path | None:
    """The folder `tokenizer_source` (or `tokenizer: {source}`) names; None for the base."""
    source = data.get("tokenizer_source")
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict):
        source = tokenizer["source"]
    if source is not None and source != "base":
        return _model_path(source, f"{path}: tokenizer_source")
    return None


def from_mergekit(data: dict, path: Path) -> Translation:
    """The l2smerge recipe a mergekit YAML (already parsed into `data`) means."""
    method = _merge_method(data, path)
    spec = MERGEKIT_PARAMETERS[method]
    top, models = _parameters_and_models(data, path)
    _refuse_unhonoured_keys(data, path, spec, top, models)
    base_path, inputs = _inputs(data, path, method, models)
    layout = Layout([p for p in [base_path] if p is not None] + [m.path for m in inputs])
    given, per_model = _parse_settings(path, spec, top, inputs)
    _check_weights(path, inputs, given, per_model, layout)
    ours = _TranslatedParameters(spec, given, per_model, layout)
    notes = _translate_parameters(method, path, ours)
    dtype, out_dtype = _dtypes(data, path)
    note = _compute_dtype_note(method, dtype, layout)
    if note:
        notes.append(note)
    tokenizer_from = _tokenizer_source(data, path)
    if method == "linear" and base_path is not None and tokenizer_from is None:
        tokenizer_from = base_path  # mergekit takes the base's tokenizer; it is one of the inputs
        base_path = None
    config = MergeConfig(
        method=MERGEKIT_METHODS[method],
        models=[
            ModelEntry(path=model.path, parameters=params)
            for model, params in zip(inputs, ours.models, strict=True)
        ],
        base=base_path,
        parameters=ours.shared,
        dtype=out_dtype or dtype,
        tokenizer_from=tokenizer_from,
    )
    return Translation(config, notes)


def _compute_dtype_note(method: str, dtype: str | None, layout: Layout) -> str | None:
    """What mergekit's arithmetic precision would be, where it is not l2smerge's float32:
    its task-vector methods compute in `dtype` (else the inputs' dtype); `linear` sums in
    float32 after rounding the inputs to `dtype`."""
    from l2smerge.merge.checkpoint import dtype_name
    from l2smerge.merge.executor import _dominant_float_dtype

    stored = dtype_name(_dominant_float_dtype(layout.first))
    if method == "linear":
        if dtype in (None, "float32") or dtype == stored:
            return None
        return f"mergekit rounds the {stored} inputs to {dtype} before its float32 sum"
    compute = dtype or stored
    if compute == "float32":
        return None
    return (
        f"mergekit computes in {compute}; l2smerge computes in float32 (the results differ by "
        f"{compute} rounding)"
    )


def _check_density(path, given, per_model, *, low, high, low_open=False) -> None:
    for where, settings in [("parameters", given)] + [
        (f"models[{i}].parameters", p) for i, p in enumerate(per_model)
    ]:
        if "density" not in settings:
            continue
        for x in settings["density"].numbers():
            if x > high or x < low or (low_open and x == low):
                bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
                raise L2SError(
                    f"{path}: {where}.density = {x}: l2smerge takes a density in {bound}"
                )


def _check_weights(path, inputs, given, per_model, layout: Layout) -> None:
    """Every model mergekit merges needs a weight for every tensor, or mergekit stops."""
    for i, model in enumerate(inputs):
        own, top = per_model[i].get("weight"), given.get("weight")
        if (own is not None and own.covers_all) or (top is not None and top.covers_all):
            continue
        if own is None and top is None:
            raise L2SError(
                f"{path}: {model.label}: no weight (mergekit requires one for every model)"
            )
        for name in layout.names:
            if not any(s is not None and s.applies(name) is not None for s in (own, top)):
                raise L2SError(
                    f"{path}: {model.label}: no weight for tensor {name!r} (no filter rule matches "
                    "it; mergekit stops there)"
                )


# -- l2smerge -> mergekit ----------------------------------------------------------------------


class _Tensors:
    """The output's tensor names and layer count, for writing mergekit settings."""

    def __init__(self, names: list[str], num_layers: int) -> None:
        self.names = names
        self.num_layers = num_layers

    def depth_rules(self, values: list[float], matching: list[str], where: str) -> list[dict]:
        """mergekit rules for an l2smerge depth list over the tensors `matching`: outside the
        layers l2smerge gives depth 0 (embeddings) or 1 (the rest) where mergekit gives t = 0,
        and a lone layer is depth 0 here but t = 1 there."""
        lone = self.num_layers <= 1
        fixes = []
        for name in matching:
            if layer_of(name) is not None:
                continue
            ours = values[0] if layer_depth(name, self.num_layers) == 0.0 else values[-1]
            if ours != values[0] or lone:
                fixes.append({"filter": self.single_out(name, where), "value": ours})
        rest = values[0] if lone else [float(v) for v in values]
        return [*fixes, {"value": rest}]

    def single_out(self, name: str, where: str) -> str:
        if [n for n in self.names if name in n] != [name]:
            raise L2SError(f"{where}: tensor {name!r} cannot be singled out by a mergekit filter")
        return name

    def setting(self, value: Any, where: str, default: Any = None) -> Any:
        """A mergekit setting meaning what the l2smerge value means on these tensors;
        `default` is what a tensor no name rule matches gets (None: the top-level value)."""
        if isinstance(value, list):
            rules = self.depth_rules(value, self.names, where)
            return rules[0]["value"] if len(rules) == 1 else rules
        if not isinstance(value, dict):
            return value
        rules: list[dict[str, Any]] = []
        left = list(self.names)
        for pattern, inner in value.items():
            matched = [n for n in left if fnmatch.fnmatchcase(n, pattern)]
            filt = _filter_for(pattern, left, matched, where)
            found = (
                self.depth_rules(inner, matched, where)
                if isinstance(inner, list)
                else [{"value": inner}]
            )
            for rule in found:
                rules.append(rule if "filter" in rule or filt is None else {"filter": filt, **rule})
            left = [n for n in left if n not in matched]
            if filt is None:
                return rules
        if default is not None:
            rules.append({"value": default})
        return rules


def _filter_for(pattern: str, left: list[str], matched: list[str], where: str) -> str | None:
    """The mergekit filter (a substring) matching exactly the tensors `pattern` matches among
    those no earlier rule took."""
    if pattern == "*":
        return None
    core = pattern[1:-1] if len(pattern) > 1 and pattern[0] == pattern[-1] == "*" else pattern
    if any(c in re.sub(r"\[[*?\[]\]", "", core) for c in "*?["):
        raise L2SError(f"{where}: rule {pattern!r} is not a substring; mergekit cannot express it")
    literal = re.sub(r"\[([*?\[])\]", r"\1", core)
    if [n for n in left if literal in n] != matched:
        raise L2SError(
            f"{where}: rule {pattern!r} matches other tensors than mergekit's substring filter "
            f"{literal!r} would"
        )
    return literal


def _map_numbers(value: Any, fn) -> Any:
    if isinstance(value, dict):
        return {k: _map_numbers(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [fn(v) for v in value]
    return fn(value)


def _product(a: Any, b: Any, where: str) -> Any:
    """a·b where one of them is a plain number (the other may vary per tensor)."""
    for x, y in ((a, b), (b, a)):
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return _map_numbers(y, lambda v, x=x: float(x) * float(v))
    raise L2SError(f"{where}: both vary per tensor; mergekit has no equivalent")


def _refuse_without_equivalent(config: MergeConfig) -> None:
    method = config.method
    family = method.split("_")[0] if method.startswith("aim") else method
    if config.on is not None or family in NO_MERGEKIT_EQUIVALENT:
        what = NO_MERGEKIT_EQUIVALENT.get(family, NO_MERGEKIT_EQUIVALENT["aim"])
        raise L2SError(f"method {method}: no mergekit equivalent (mergekit has no {what})")
    if method not in TO_MERGEKIT:
        raise L2SError(f"method {method}: no mergekit equivalent")


@dataclass
class _RecipeParameters:
    """An l2smerge recipe's parameters (with the method's defaults), written as mergekit
    settings on the output's tensors."""

    theirs: str  # mergekit's name for the method
    tensors: _Tensors
    defaults: dict[str, Any]
    shared: dict[str, Any]  # every parameter: the recipe's value, else the default
    per_model: list[dict[str, Any]]

    def one_value(self, name: str) -> Any:
        """The shared value of a parameter mergekit reads only from the top level."""
        if any(name in p for p in self.per_model):
            raise L2SError(
                f"{name} set per model: mergekit's {self.theirs} has no per-model {name}"
            )
        return self.shared[name]

    def top(self, name: str, convert=None) -> Any:
        value, default = self.shared[name], self.defaults[name]
        if convert is not None:
            value, default = _map_numbers(value, convert), convert(default)
        return self.tensors.setting(value, f"parameters.{name}", default)

    def per(self, i: int, name: str, convert=None) -> Any:
        value = self.per_model[i][name]
        value = _map_numbers(value, convert) if convert is not None else value
        return self.tensors.setting(value, f"models[{i}].{name}")


def _weight_settings(method: str, ours: _RecipeParameters) -> tuple[dict, list[dict]]:
    """mergekit's normalize, weight and lambda (top level) and weights (per model); an α set
    per model is folded into the weights."""
    parameters: dict[str, Any] = {}
    entries: list[dict[str, Any]] = [{} for _ in ours.per_model]
    normalize = ours.one_value("normalize")
    parameters["normalize"] = ours.top("normalize")
    if method != "average" and any("alpha" in p for p in ours.per_model):
        if normalize is not False:
            raise L2SError(
                "alpha set per model with normalize: mergekit divides by the weights alone, "
                "so it has no equivalent; set weight per model instead"
            )
        for i, p in enumerate(ours.per_model):  # fold αk into wk; lambda stays 1
            weight = _product(
                p.get("weight", ours.shared["weight"]),
                p.get("alpha", ours.shared["alpha"]),
                f"models[{i}]: weight × alpha",
            )
            entries[i]["weight"] = ours.tensors.setting(weight, f"models[{i}].weight")
        parameters["lambda"] = 1.0
    else:
        parameters["weight"] = ours.top("weight")
        for i, p in enumerate(ours.per_model):
            if "weight" in p:
                entries[i]["weight"] = ours.per(i, "weight")
        if method != "average":
            parameters["lambda"] = ours.tensors.setting(
                ours.one_value("alpha"), "alpha", ours.defaults["alpha"]
            )
    return parameters, entries


def _sparsify_settings(
    method: str, ours: _RecipeParameters, parameters: dict, entries: list[dict]
) -> list[str]:
    """Add mergekit's density and rescale to `parameters` and `entries`; returns notes on what
    differs."""
    notes: list[str] = []
    if method == "ties":
        parameters["density"] = ours.top("density")
        for i, p in enumerate(ours.per_model):
            if "density" in p:
                entries[i]["density"] = ours.per(i, "density")
    if method in ("dare_ta", "dare_ties"):
        parameters["density"] = ours.top("drop_rate", lambda p: 1.0 - p)
        for i, p in enumerate(ours.per_model):
            if "drop_rate" in p:
                entries[i]["density"] = ours.per(i, "drop_rate", lambda p: 1.0 - p)
        notes.append("DARE masks come from mergekit's own random generator: other masks")
    if method in ("ties", "dare_ta", "dare_ties"):
        rescale = ours.one_value("rescale")
        if "inverse" in str(rescale):
            notes.append(
                "rescale inverse (1/(1 - p)) has no mergekit form: rescale: true matches each "
                "tensor's L1 norm instead (the same in expectation)"
            )
        parameters["rescale"] = ours.tensors.setting(
            _map_numbers(rescale, lambda r: r != "none"),
            "rescale",
            ours.defaults["rescale"] != "none",
        )
    return notes


def _sign_election_notes(method: str, ours: _RecipeParameters) -> list[str]:
    """Refuse what mergekit's sign election cannot do; notes on where its result differs."""
    if method == "dare_ties" and (
        ours.shared["density"] != 1.0 or any("density" in p for p in ours.per_model)
    ):
        raise L2SError(
            "dare_ties with a magnitude trim (density below 1): mergekit's dare_ties does not "
            "trim after DARE, so it has no equivalent"
        )
    if method in ("ties", "dare_ties") and ours.one_value("tie_break") != "mergekit":
        return [
            "tie_break l2smerge: mergekit keeps max(1, floor(density * n)) entries exactly and "
            "elects + on an exact sign cancellation, so entries tied at the threshold or "
            "cancelling may differ (tie_break: mergekit gives the same result)"
        ]
    return []


def _recipe(config: MergeConfig, plan, parameters: dict, entries: list[dict]) -> dict[str, Any]:
    """The mergekit recipe: method, base, models with their own parameters, the shared
    parameters, dtypes and the tokenizer's source."""
    from l2smerge.merge.checkpoint import dtype_name

    recipe: dict[str, Any] = {"merge_method": TO_MERGEKIT[config.method]}
    if config.base is not None and plan.method.needs_base:
        recipe["base_model"] = str(config.base)
    recipe["models"] = [
        {"model": str(m.path), **({"parameters": e} if e else {})}
        for m, e in zip(config.models, entries, strict=True)
    ]
    recipe["parameters"] = parameters
    recipe["dtype"] = "float32"  # l2smerge computes in float32
    recipe["out_dtype"] = dtype_name(plan.out_dtype)
    source = config.config_source
    if source != (config.base if plan.method.needs_base else config.models[0].path):
        recipe["tokenizer_source"] = str(source)
    return recipe


def to_mergekit(config: MergeConfig) -> tuple[str, list[str]]:
    """mergekit YAML for the same merge, and notes on what differs; L2SError when mergekit has
    no equivalent."""
    from l2smerge.merge.executor import plan_merge

    _refuse_without_equivalent(config)
    method = config.method
    config = config.relative_to(Path.cwd())  # mergekit reads relative paths from its cwd
    plan = plan_merge(config)  # checks the whole merge; gives the tensors and the dtype
    defaults = plan.method.params
    ours = _RecipeParameters(
        theirs=TO_MERGEKIT[method],
        tensors=_Tensors([job.name for job in plan.jobs], plan.num_layers),
        defaults=defaults,
        shared={name: config.parameters.get(name, default) for name, default in defaults.items()},
        per_model=[m.parameters for m in config.models],
    )
    parameters, entries = _weight_settings(method, ours)
    notes = _sparsify_settings(method, ours, parameters, entries)
    notes += _sign_election_notes(method, ours)
    recipe = _recipe(config, plan, parameters, entries)
    header = f"# mergekit recipe written by l2smerge for method {method}\n"
    header += "".join(f"# note: {n}\n" for n in notes)
    return header + yaml.safe_dump(recipe, sort_keys=False), notes
