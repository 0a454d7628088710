"""pydantic's validation errors as one plain sentence naming the key: `seed: expected a whole
number, got 'abc'` instead of `seed\n  Input should be a valid integer, unable to parse string
as an integer [type=int_parsing, input_value='abc', input_type=str]`."""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import ValidationError

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring = 3, 6, 6, 60

_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "path_type": "a path",
    "none_required": "nothing (null)",
}


def short_repr(value: Any) -> str:
    """repr(value), cut to about 60 characters. Bounded work: a YAML alias bomb (a list of
    lists of lists ... shared by reference) is never expanded in full."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk(data: Any, loc: tuple[Any, ...]) -> tuple[list[Any], Any]:
    """The part of `loc` that names keys and indexes of `data` (pydantic adds the names of
    union branches and validators, which are not keys), and the value found there."""
    path: list[Any] = []
    value = data
    for part in loc:
        if isinstance(value, dict) and part in value:
            path.append(part)
            value = value[part]
        elif isinstance(value, (list, tuple)) and isinstance(part, int) and part < len(value):
            path.append(part)
            value = value[part]
        elif isinstance(value, dict) and not path and part not in value and isinstance(part, str):
            path.append(part)  # a missing or unknown top-level key
            value = None
            break
    return path, value


def key_name(path: list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_validation_error(
    exc: ValidationError, data: Any, known: list[str] | None = None
) -> str:
    """The first problem of `exc` (raised validating `data`) as 'key: what is wrong'.
    `known`: the allowed top-level keys, listed when a key is unknown."""
    errors = exc.errors()
    groups: dict[str, list[dict[str, Any]]] = {}
    values: dict[str, Any] = {}
    for err in errors:
        path, value = _walk(data, tuple(err["loc"]))
        if "parameters" in path:  # a parameter value: name it, not the branch that failed
            path = path[: path.index("parameters") + 2]
            err = {**err, "type": "parameter_value"}
            value = _walk(data, tuple(path))[1]
        key = key_name(path) or "config"
        groups.setdefault(key, []).append(err)
        values.setdefault(key, value)
    key, group = next(iter(groups.items()))
    first = group[0]
    kind = first["type"]
    if kind == "missing":
        return f"{key}: required key missing"
    if kind == "extra_forbidden":
        listing = f" (known: {', '.join(known)})" if known and "." not in key else ""
        return f"{key}: unknown key{listing}"
    got = f", got {short_repr(values[key])}"
    if kind == "parameter_value":
        return (
            f"{key}: expected a number, text, a list of numbers (one per depth) or a mapping "
            f"of tensor-name patterns to those{got}"
        )
    if kind == "literal_error":
        return f"{key}: expected {first['ctx']['expected']}{got}"
    expected = list(dict.fromkeys(_EXPECTED[e["type"]] for e in group if e["type"] in _EXPECTED))
    if expected:
        return f"{key}: expected {' or '.join(expected)}{got}"
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message[0].lower() + message[1:] if message else kind
    return f"{key}: {message}" + ("" if kind == "value_error" else got)
