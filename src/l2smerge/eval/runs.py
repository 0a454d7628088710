"""Reading run directories (RUN_DIR/results.jsonl + RUN_DIR/summary.json) for compare, report
and sweep. Only `bench`, `id`, `correct` and `tokens` are required per line; the rest
(`response`, `extracted`, `gold`, `truncated`, `reflective`, `reflections`, `level`) is used
when present."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import iter_jsonl

REQUIRED_FIELDS = ("bench", "id", "correct", "tokens")


@dataclass
class Run:
    """One evaluated run: its records keyed by (bench, id), in file order."""

    path: Path
    label: str
    records: dict[tuple[str, int], dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def benches(self) -> list[str]:
        seen: dict[str, None] = {}
        for bench, _ in self.records:
            seen.setdefault(bench, None)
        return list(seen)

    def bench_records(self, bench: str) -> list[dict[str, Any]]:
        return [r for (b, _), r in self.records.items() if b == bench]


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Load RUN_DIR; every malformed line is reported with its file and line number."""
    path = Path(path)
    results = path / "results.jsonl"
    if not path.is_dir():
        raise L2SError(f"{path}: not a run directory (expected a folder with results.jsonl)")
    if not results.is_file():
        raise L2SError(f"{results}: missing; is {path} a run directory written by l2smerge eval?")
    records: dict[tuple[str, int], dict[str, Any]] = {}
    # a last line cut short by a killed run is skipped: it is not written yet
    for lineno, row in iter_jsonl(results, skip_cut_last_line=True):
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise L2SError(f"{results}:{lineno}: missing field(s) {', '.join(missing)}")
        try:
            # a free-form task's ids are text (docs/tasks.md); a benchmark's, line numbers
            freeform = isinstance(row.get("key_points"), list)
            key = (str(row["bench"]), str(row["id"]) if freeform else int(row["id"]))
            row["correct"] = bool(row["correct"])
            # null tokens: a replayed run without --tokenizer has no token counts
            row["tokens"] = None if row["tokens"] is None else int(row["tokens"])
        except (TypeError, ValueError):
            raise L2SError(
                f"{results}:{lineno}: id and tokens must be integers, correct a boolean"
            ) from None
        records[key] = row  # a later line for the same item (a resumed run) wins
    if not records:
        raise L2SError(f"{results}: no results; the run has not evaluated any item yet")
    summary: dict[str, Any] = {}
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise L2SError(f"{summary_path}: not valid JSON ({exc.msg})") from None
    return Run(path=path, label=label or path.resolve().name, records=records, summary=summary)


def is_reflective(record: dict[str, Any]) -> bool | None:
    """The record's reflective flag, or None when the run did not record it."""
    value = record.get("reflective")
    return None if value is None else bool(value)


def level_of(record: dict[str, Any]) -> str | None:
    level = record.get("level")
    return None if level is None or level == "" else str(level)
