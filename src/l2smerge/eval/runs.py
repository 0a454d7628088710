"""Run directories, the one reader and writer (DESIGN.md's contract): RUN_DIR/results.jsonl, one
line per item, appended and flushed as each item is graded; RUN_DIR/summary.json, written
atomically at the end; RUN_DIR/run.json, what produced the results, so that a rerun resumes
only the same run, never mixes two.

`RunDir` writes them (`l2smerge eval`); `load_run` reads them (compare, report, sweep). Only
`bench`, `id`, `correct` and `tokens` are required per line; the rest (`response`, `extracted`,
`gold`, `truncated`, `reflective`, `reflections`, `level`) is used when present."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import iter_jsonl

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"
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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results_path = self.path / RESULTS
        self.summary_path = self.path / SUMMARY
        self.info_path = self.path / RUN_INFO
        self._out: TextIO | None = None

    def check_info(self, info: dict[str, Any]) -> None:
        """Record `info` in run.json, or check that an earlier run there had the same."""
        if self.info_path.is_file():
            try:
                earlier = json.loads(self.info_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise L2SError(f"{self.info_path}: malformed JSON ({exc.msg})") from None
            for key, value in info.items():
                if key in earlier and earlier[key] != value:
                    raise L2SError(
                        f"{self.path} holds a run with {key}={earlier[key]!r}, not {value!r}; "
                        "choose another output directory (-o) to keep both"
                    )
            return
        write_json_atomic(self.info_path, info)

    def load_results(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Results already written. A last line cut short by a killed run is dropped (and
        cut from the file) so the item is evaluated again; any other bad line is an error."""
        done: dict[tuple[str, int], dict[str, Any]] = {}
        if not self.results_path.is_file():
            return done
        data = self.results_path.read_bytes()
        lines = data.split(b"\n")
        complete_len = len(data)
        if lines and lines[-1].strip():  # no final newline: the writer was killed mid-line
            try:
                json.loads(lines[-1])
            except (json.JSONDecodeError, UnicodeDecodeError):
                complete_len = len(data) - len(lines[-1])
                lines = lines[:-1]
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (record["bench"], record["id"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise L2SError(
                    f"{self.results_path}:{lineno}: malformed result line; fix or delete it"
                ) from None
            done[key] = record  # a repeated item (hand-edited file): the last line wins
        if complete_len < len(data):
            with self.results_path.open("r+b") as f:
                f.truncate(complete_len)
        elif data and not data.endswith(b"\n"):
            with self.results_path.open("ab") as f:
                f.write(b"\n")
        return done

    def append(self, record: dict[str, Any]) -> None:
        if self._out is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._out = self.results_path.open("a", encoding="utf-8")
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)
