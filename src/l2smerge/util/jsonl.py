"""Reading JSONL files (benchmarks, calibration sets, run results) with errors that name the
file and the line a text editor shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError


def parse_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict; `where` ("file:line") names it in the error."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise L2SError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise L2SError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of `path`, read lazily. (Run results,
    whose last line a killed writer may have cut, are read by eval/runs.py.)"""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            yield lineno, parse_object(line, f"{path}:{lineno}")
