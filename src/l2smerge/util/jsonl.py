"""Reading JSON and JSONL files (configs, benchmarks, calibration sets, run results) with errors
that name the file and the line a text editor shows."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError, describe_os_error

# A JSON side file (config.json, a shard index, a tokenizer config) larger than this is not one.
MAX_JSON_BYTES = 256 << 20


def parse_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict; `where` ("file:line") names it in the error."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise L2SError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise L2SError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _not_utf8(where: str, byte: int, column: int) -> L2SError:
    return L2SError(
        f"{where}: not valid UTF-8 (byte 0x{byte:02x} at column {column}); save it as UTF-8"
    )


def decode_line(raw: bytes, where: str) -> str:
    """UTF-8 text of one line, or an error naming the line and the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(where, raw[exc.start], exc.start + 1) from None


def read_text(path: Path, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> str:
    """A whole small text file as UTF-8, with one-line errors for a missing, unreadable,
    oversized or non-UTF-8 file (naming the line of the first bad byte)."""
    try:  # non-blocking: opening a FIFO with no writer would wait forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise L2SError(describe_os_error(exc, path, f"cannot read the {what}")) from None
    except ValueError:  # a NUL byte in the path
        raise L2SError(f"{path!r}: not a valid path") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise L2SError(f"{path}: not a regular file; the {what} must be a file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise L2SError(describe_os_error(exc, path, f"cannot read the {what}")) from None
    if len(data) > max_bytes:
        raise L2SError(f"{path}: larger than {max_bytes >> 20} MB; not a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise _not_utf8(f"{path}:{line}", data[exc.start], column) from None


def read_json(path: Path, what: str = "JSON file") -> Any:
    """A small JSON file, parsed, with errors naming the file and line."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise L2SError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of `path`, read lazily; a line that is
    not UTF-8 is an error naming it. (Run results, whose last line a killed writer may have
    cut, are read by eval/runs.py.)"""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise L2SError(describe_os_error(exc, path, "cannot read")) from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            line = decode_line(raw, where)
            if not line.strip():
                continue
            yield lineno, parse_object(line, where)
