"""Free-form task files: prompts whose answers are judged by the key points they cover.

One JSON object a line:

    {"id": "refund-window", "prompt": "How long do I have to return an order?",
     "key_points": ["30 days", ["original packaging", "unopened box"], {"regex": "..."}],
     "group": "returns", "reference": "...", "meta": {...}}

`prompt` (a user message) or `messages` (a chat, ending with a user turn); `key_points`: at
least one, each a phrase, a list of alternative phrasings of one point, or an object
`{"regex": PATTERN, "text"?: NAME}`. A task is a bench named after its file (`faq.jsonl` is
the task `faq`); its items are named by their `id` (a string or an integer; ids are compared
as text, so `3` and `"3"` are the same id). See docs/tasks.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError

FIELDS = ("id", "prompt", "messages", "key_points", "group", "reference", "meta")
ROLES = ("system", "user", "assistant")
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A regex key point is matched by RE2 (linear time); the bound keeps its automaton small.
MAX_REGEX_CHARS = 2000


@dataclass(frozen=True)
class KeyPoint:
    """One point an answer should make. `text` names it (in reports, and to an LLM judge);
    the lexical judge looks for any of `phrasings`, or for `regex` when set."""

    text: str
    phrasings: tuple[str, ...] = ()
    regex: str | None = None

    def to_json(self) -> str | list[str] | dict[str, str]:
        """The key point as a task file writes it."""
        if self.regex is not None:
            return {"regex": self.regex, "text": self.text}
        return self.phrasings[0] if len(self.phrasings) == 1 else list(self.phrasings)


@dataclass(frozen=True)
class TaskItem:
    """One prompt of a task, with the key points its answer should cover."""

    task: str
    id: str | int
    messages: tuple[dict[str, str], ...]
    key_points: tuple[KeyPoint, ...]
    group: str | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # "file:line", for errors about this item

    @property
    def key(self) -> tuple[str, str | int]:
        return (self.task, self.id)

    @property
    def question(self) -> str:
        """The last user message: what the item asks."""
        return self.messages[-1]["content"]

    @property
    def group_name(self) -> str:
        """The item's group; the task's name when it has none."""
        return self.group if self.group is not None else self.task


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    items: tuple[TaskItem, ...]


def task_name(path: str | Path) -> str:
    """The bench name of a task file: its file name without `.jsonl` (or its last suffix)."""
    path = Path(path)
    name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    if not TASK_NAME.fullmatch(name):
        raise L2SError(
            f"{path}: a task is named after its file, and {name!r} is not a usable name; "
            "rename the file to letters, digits, '.', '_' or '-' (e.g. faq.jsonl)"
        )
    return name


def load_task(path: str | Path, limit: int | None = None) -> Task:
    """Read and check a task file; every problem is an error naming the file and line.
    `limit` keeps the first N items (after checking the whole file)."""
    path = Path(path)
    name = task_name(path)
    if not path.is_file():
        raise L2SError(f"task file {path} not found")
    items: list[TaskItem] = []
    first_line: dict[str, int] = {}
    for lineno, row in _read_objects(path):
        where = f"{path}:{lineno}"
        item = parse_item(name, row, where)
        id_text = str(item.id)
        if id_text in first_line:
            raise L2SError(
                f"{where}: duplicate id {item.id!r} (first on line {first_line[id_text]})"
            )
        first_line[id_text] = lineno
        items.append(item)
    if not items:
        raise L2SError(f"{path}: no items; a task file holds one JSON object per line")
    if limit is not None:
        items = items[:limit]
    return Task(name, path, tuple(items))


def load_tasks(paths: Sequence[str | Path], limit: int | None = None) -> list[Task]:
    """Several task files; their names must differ from each other and from the benchmarks."""
    from l2smerge.eval.benchmarks import BENCHMARKS

    tasks: list[Task] = []
    seen: dict[str, Path] = {}
    for path in paths:
        name = task_name(path)
        if name in BENCHMARKS:
            raise L2SError(
                f"{path}: the task would be named {name!r}, which is a benchmark; rename the file"
            )
        if name in seen:
            raise L2SError(
                f"{path} and {seen[name]} would both be the task {name!r}; rename one of them"
            )
        seen[name] = Path(path)
        tasks.append(load_task(path, limit))
    return tasks


def _read_objects(path: Path):
    """(line number, object) for each non-blank line; bytes are decoded line by line so that
    a non-UTF-8 byte is reported with its line."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as some editors write
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise L2SError(
                f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise L2SError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
            ) from None
        if not isinstance(row, dict):
            raise L2SError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def parse_item(task: str, row: dict[str, Any], where: str) -> TaskItem:
    """One task-file line as a TaskItem; `where` ("file:line") names it in errors."""
    unknown = [k for k in row if k not in FIELDS]
    if unknown:
        raise L2SError(
            f"{where}: unknown field {unknown[0]!r}; an item has {', '.join(FIELDS)} "
            '(put anything else under "meta")'
        )
    item_id = row.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise L2SError(f'{where}: missing "id" (a string or an integer)')
    if isinstance(item_id, str) and not item_id.strip():
        raise L2SError(f'{where}: empty "id"')
    messages = _messages(row, where)
    key_points = _key_points(row.get("key_points"), where)
    group = _optional_text(row, "group", where)
    reference = _optional_text(row, "reference", where)
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise L2SError(f'{where}: "meta" must be an object')
    return TaskItem(task, item_id, messages, key_points, group, reference, meta, where)


def _optional_text(row: dict[str, Any], name: str, where: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise L2SError(f"{where}: {name!r} must be a non-empty string")
    return value


def _messages(row: dict[str, Any], where: str) -> tuple[dict[str, str], ...]:
    has_prompt, has_messages = "prompt" in row, "messages" in row
    if has_prompt == has_messages:
        raise L2SError(f'{where}: give exactly one of "prompt" (a string) or "messages"')
    if has_prompt:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise L2SError(f'{where}: "prompt" must be a non-empty string')
        return ({"role": "user", "content": prompt},)
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise L2SError(f'{where}: "messages" must be a non-empty list of {{role, content}}')
    out = []
    for n, message in enumerate(messages, start=1):
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or message["role"] not in ROLES
            or not isinstance(message["content"], str)
        ):
            raise L2SError(
                f'{where}: message {n} must be {{"role": {"|".join(ROLES)}, "content": string}}'
            )
        if not message["content"].strip():
            raise L2SError(f"{where}: message {n} has empty content")
        out.append({"role": message["role"], "content": message["content"]})
    if out[-1]["role"] != "user":
        raise L2SError(f"{where}: the last message must be the user's (the model answers it)")
    return tuple(out)


def _key_points(value: Any, where: str) -> tuple[KeyPoint, ...]:
    if value is None:
        raise L2SError(f'{where}: missing "key_points" (the points a good answer covers)')
    if not isinstance(value, list) or not value:
        raise L2SError(f'{where}: "key_points" must be a non-empty list')
    points = tuple(_key_point(v, f"{where}: key point {n}") for n, v in enumerate(value, start=1))
    seen: set[str] = set()
    for n, point in enumerate(points, start=1):
        if point.text in seen:
            raise L2SError(f"{where}: key point {n} ({point.text!r}) is listed twice")
        seen.add(point.text)
    return points


def _key_point(value: Any, where: str) -> KeyPoint:
    from l2smerge.eval.judges.lexical import compile_regex, normalize

    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        if not value or not all(isinstance(p, str) for p in value):
            raise L2SError(f"{where}: a list of alternative phrasings must hold strings only")
        for phrasing in value:
            if not normalize(phrasing):
                raise L2SError(
                    f"{where}: phrasing {phrasing!r} has no letters, digits or symbols to match"
                )
        return KeyPoint(text=value[0], phrasings=tuple(value))
    if isinstance(value, dict):
        pattern, text = value.get("regex"), value.get("text")
        if set(value) - {"regex", "text"} or not isinstance(pattern, str) or not pattern:
            raise L2SError(f'{where}: an object key point is {{"regex": PATTERN, "text"?: NAME}}')
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise L2SError(f'{where}: "text" must be a non-empty string')
        if len(pattern) > MAX_REGEX_CHARS:
            raise L2SError(f"{where}: regex longer than {MAX_REGEX_CHARS} characters")
        compile_regex(pattern, where)
        return KeyPoint(text=text if text is not None else f"/{pattern}/", regex=pattern)
    raise L2SError(
        f'{where}: must be a phrase, a list of alternative phrasings, or {{"regex": PATTERN}}'
    )
