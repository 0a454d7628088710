"""Reading the YAML files users write (merge configs, sweep files) safely and as written.

* Only plain data: `yaml.SafeLoader`, so no tag can construct a Python object.
* Keys as written: YAML 1.1 reads the plain words on/off/yes/no/y/n as booleans, so the
  documented `on: ties` (AIM's inner method) would arrive as the key True. As a mapping key
  such a word stays the string it is; as a value it keeps its YAML meaning (and a schema that
  wants a number then refuses `density: yes`).
* A key given twice in one mapping is an error naming its line (PyYAML keeps the last silently).
* Errors name the file and line: missing, unreadable, not UTF-8, invalid YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import read_text

MAX_YAML_BYTES = 16 << 20
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    def _key(self, key_node: yaml.Node, deep: bool) -> Any:
        if key_node.tag == _BOOL_TAG and isinstance(key_node, yaml.ScalarNode):
            return key_node.value  # `on:` stays "on", not True
        return self.construct_object(key_node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:  # keys written here (not those merged in by <<:)
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = self._key(key_node, deep), key_node.start_mark.line + 1
            if key in first_line:
                raise L2SError(
                    f"line {line}: key {key!r} given twice (first on line {first_line[key]})"
                )
            first_line[key] = line
        self.flatten_mapping(node)  # merge keys first; keys written here override them
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found an unhashable key",
                    key_node.start_mark,
                ) from None
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def load_yaml_text(text: str, name: str | Path) -> Any:
    """Parse YAML text; `name` (the file) is named in every error."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (_Loader is a SafeLoader)
    except L2SError as exc:
        raise L2SError(f"{name}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise L2SError(f"{name}:{where} invalid YAML ({problem})") from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse a YAML file the user wrote."""
    path = Path(path)
    return load_yaml_text(read_text(path, what, MAX_YAML_BYTES), path)
