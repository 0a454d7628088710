"""Run directories, the one reader and writer (DESIGN.md's contract): RUN_DIR/results.jsonl, one
line per item, appended and flushed as each item is graded; RUN_DIR/summary.json, written
atomically at the end; RUN_DIR/run.json, what produced the results (the run identity of
eval/identity.py, and each session's versions and backend arguments), so that a rerun resumes
only the same run, never mixes two.

`RunDir` writes them (`l2smerge eval`); `load_run` reads them (compare, report, sweep). Only
`bench`, `id`, `correct` and `tokens` are required per line; the rest (`response`, `extracted`,
`gold`, `truncated`, `reflective`, `reflections`, `level`) is used when present.

A sampled run (eval/sampling.py) has one line per item per sample, each with its `sample`
(0, 1, ...); a greedy run's lines have none. Lines are keyed by `line_key`: (bench, id), or
(bench, id, sample). `load_run` folds a sampled run's lines into one record per item
(eval.metrics.item_records), so compare, report and sweep pair items, whatever the samples."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from l2smerge.eval.identity import identity_differences, protocol_of
from l2smerge.eval.metrics import item_records
from l2smerge.util.atomic import write_json_atomic
from l2smerge.util.errors import L2SError, writing
from l2smerge.util.jsonl import parse_object, read_json

_KEPT = "the results so far are kept: free space and rerun to resume"

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"
PROMPTS = "prompts.jsonl"  # with --log-prompts: the rendered prompt of each item
REQUIRED_FIELDS = ("bench", "id", "correct", "tokens")


@dataclass
class Run:
    """One evaluated run: one record per item keyed by (bench, id), in file order (a sampled
    run's samples folded: eval.metrics.item_records)."""

    path: Path
    label: str
    records: dict[tuple[str, int], dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    # what eval/identity.py compares across runs; None when run.json records none
    protocol: dict[str, Any] | None = None

    @property
    def benches(self) -> list[str]:
        seen: dict[str, None] = {}
        for bench, _ in self.records:
            seen.setdefault(bench, None)
        return list(seen)

    def bench_records(self, bench: str) -> list[dict[str, Any]]:
        return [r for (b, _), r in self.records.items() if b == bench]


def line_key(bench: str, item_id: Any, sample: int | None) -> tuple[Any, ...]:
    """The key of one results.jsonl line: (bench, id), or (bench, id, sample) when sampled."""
    return (bench, item_id) if sample is None else (bench, item_id, sample)


def read_results(path: Path) -> tuple[dict[tuple[Any, ...], dict[str, Any]], int]:
    """results.jsonl as records keyed by `line_key`, and the byte length of its complete
    lines: a last line cut short by a killed writer is left out (it will be written again).
    A later line for the same item and sample (a hand-edited file) wins."""
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    sampled: bool | None = None
    complete = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):  # only the last line can lack its newline
                try:
                    json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
            complete += len(raw)
            if not raw.strip():
                continue
            try:
                row = parse_object(raw.decode("utf-8"), f"{path}:{lineno}")
            except UnicodeDecodeError:
                raise L2SError(f"{path}:{lineno}: not UTF-8 text") from None
            missing = [k for k in REQUIRED_FIELDS if k not in row]
            if missing:
                raise L2SError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            try:
                # a free-form task's ids are text (docs/tasks.md); a benchmark's, line numbers
                freeform = isinstance(row.get("key_points"), list)
                key = (str(row["bench"]), str(row["id"]) if freeform else int(row["id"]))
                row["correct"] = bool(row["correct"])
                # null tokens: a replayed run without --tokenizer has no token counts
                row["tokens"] = None if row["tokens"] is None else int(row["tokens"])
            except (TypeError, ValueError):
                raise L2SError(
                    f"{path}:{lineno}: id and tokens must be integers, correct a boolean"
                ) from None
            sample = row.get("sample")
            if sample is not None and (
                isinstance(sample, bool) or not isinstance(sample, int) or sample < 0
            ):
                raise L2SError(f"{path}:{lineno}: sample must be an integer >= 0, got {sample!r}")
            if sampled is None:
                sampled = sample is not None
            elif sampled != (sample is not None):
                raise L2SError(
                    f"{path}:{lineno}: lines with and without `sample` in one run (a sampled "
                    "run numbers every response, a greedy run none)"
                )
            records[line_key(*key, sample)] = row
    return records, complete


def read_run_info(path: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/run.json, or None when there is none."""
    info_path = Path(path) / RUN_INFO
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise L2SError(f"{info_path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise L2SError(f"{info_path}: expected a JSON object")
    return info


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Load RUN_DIR; every malformed line is reported with its file and line number. (Items
    without a token count are counted by eval/metrics, never averaged over.)"""
    path = Path(path)
    results = path / RESULTS
    if not path.is_dir():
        raise L2SError(f"{path}: not a run directory (expected a folder with results.jsonl)")
    if not results.is_file():
        raise L2SError(f"{results}: missing; is {path} a run directory written by l2smerge eval?")
    lines, _ = read_results(results)
    if not lines:
        raise L2SError(f"{results}: no results; the run has not evaluated any item yet")
    # items keyed as their lines are (a task's ids as text), whatever the file spelled
    keyed = [{**row, "bench": key[0], "id": key[1]} for key, row in lines.items()]
    records = {(r["bench"], r["id"]): r for r in item_records(keyed)}
    summary: dict[str, Any] = {}
    summary_path = path / SUMMARY
    if summary_path.is_file():
        summary = read_json(summary_path, "run summary")
        if not isinstance(summary, dict):
            raise L2SError(f"{summary_path}: a run summary is a JSON object")
    info = read_run_info(path)
    return Run(
        path=path,
        label=label or path.resolve().name,
        records=records,
        summary=summary,
        protocol=protocol_of(None if info is None else info.get("identity")),
    )


def is_reflective(record: dict[str, Any]) -> bool | None:
    """The record's reflective flag, or None when the run did not record it."""
    value = record.get("reflective")
    return None if value is None else bool(value)


def level_of(record: dict[str, Any]) -> str | None:
    level = record.get("level")
    return None if level is None or level == "" else str(level)


class RunDir:
    """Writes one run directory: run.json (when the backend is ready), results line by line,
    optionally the rendered prompts (prompts.jsonl), summary.json at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results_path = self.path / RESULTS
        self.summary_path = self.path / SUMMARY
        self.info_path = self.path / RUN_INFO
        self.prompts_path = self.path / PROMPTS
        self._out: dict[Path, TextIO] = {}

    def read_info(self) -> dict[str, Any] | None:
        return read_run_info(self.path)

    def check_identity(self, identity: dict[str, Any], *, has_results: bool) -> None:
        """Refuse to resume a run of another model or protocol. Only results lock a directory:
        a run.json without results (an eval that failed before its first item) is replaced."""
        if not has_results:
            return
        info = self.read_info()
        earlier = None if info is None else info.get("identity")
        if not isinstance(earlier, dict):
            what = "no run.json" if info is None else "a run.json without a run identity"
            raise L2SError(
                f"{self.path} holds results with {what} (written by hand or by an older "
                "l2smerge): cannot tell which model and prompt made them; choose another "
                "output directory (-o)"
            )
        problems = identity_differences(earlier, identity)
        if problems:
            hint = ""
            if any(p.startswith("grader_version") for p in problems):
                hint = (
                    "; to regrade its responses without generating: l2smerge eval LABEL "
                    f"--backend replay --responses {self.results_path} -o NEW"
                )
            raise L2SError(
                f"{self.path} holds a run of another model or protocol ({'; '.join(problems)}); "
                f"choose another output directory (-o) to keep both{hint}"
            )

    def write_info(self, identity: dict[str, Any], session: dict[str, Any], **fields: Any) -> None:
        """run.json: the identity and `fields`, with `session` added to the earlier sessions
        of the same run (a resumed run keeps how each part was made)."""
        info = self.read_info() or {}
        sessions = info.get("sessions") if info.get("identity") == identity else None
        record = {
            "identity": identity,
            **fields,
            "sessions": [*(sessions if isinstance(sessions, list) else []), session],
        }
        write_json_atomic(self.info_path, record)

    def load_results(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Results already written. A last line cut short by a killed run is dropped (and
        cut from the file) so the item is evaluated again; any other bad line is an error."""
        if not self.results_path.is_file():
            return {}
        records, complete = read_results(self.results_path)
        data_len = self.results_path.stat().st_size
        if complete < data_len:
            with self.results_path.open("r+b") as f:
                f.truncate(complete)
        elif data_len:
            with self.results_path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                ends_with_newline = f.read(1) == b"\n"
            if not ends_with_newline:
                with self.results_path.open("ab") as f:
                    f.write(b"\n")
        return records

    def _append(self, path: Path, row: dict[str, Any]) -> None:
        # a failed write (disk full) leaves at most a cut last line, which a rerun drops
        with writing(path, then=_KEPT):
            if path not in self._out:
                self.path.mkdir(parents=True, exist_ok=True)
                self._out[path] = path.open("a", encoding="utf-8")
            self._out[path].write(json.dumps(row, ensure_ascii=False) + "\n")
            self._out[path].flush()

    def append(self, record: dict[str, Any]) -> None:
        self._append(self.results_path, record)

    def append_prompt(self, row: dict[str, Any]) -> None:
        self._append(self.prompts_path, row)

    def close(self) -> None:
        outs, self._out = self._out, {}
        for path, out in outs.items():
            with writing(path, then=_KEPT):
                out.close()

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)
