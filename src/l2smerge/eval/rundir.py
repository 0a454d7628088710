"""The run directory contract (DESIGN.md): RUN_DIR/results.jsonl, one line per item, appended
and flushed as each item is graded, and RUN_DIR/summary.json, written atomically at the end.
RUN_DIR/run.json records what produced the results so that a rerun resumes only the same
run, never mixes two."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from l2smerge.util.errors import L2SError

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"


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
