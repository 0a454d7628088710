"""A sweep folder's record of finished points: points.jsonl (one line per finished point,
rewritten atomically as each finishes) and sweep.json (the settings they were measured under).

Rerunning into a folder resumes only the same setup, so that results measured under other
settings are never mixed into one front (`check_same_setup`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from l2smerge.choose.sweep_point import has_results
from l2smerge.choose.sweep_spec import Point, SweepSpec
from l2smerge.util.atomic import write_json_atomic, write_jsonl_atomic
from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import read_text

POINTS_FILE = "points.jsonl"
SETUP_FILE = "sweep.json"


class PointStore:
    """The records of finished points, by point id, as points.jsonl holds them."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.path = out_dir / POINTS_FILE
        self.records: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for lineno, line in enumerate(read_text(self.path, "points file").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    records[record["id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise L2SError(f"{self.path}:{lineno}: not a points.jsonl record") from None
        return records

    def __contains__(self, point_id: str) -> bool:
        return point_id in self.records

    def __getitem__(self, point_id: str) -> dict[str, Any]:
        return self.records[point_id]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self.records.values()))

    def of_sweep(self, points: list[Point], *, searching: bool) -> list[dict[str, Any]]:
        """The records of `points` and, when the sweep searches, of its search trials: points
        of earlier versions of the sweep file stay recorded but are not this sweep's."""
        wanted = {p.id for p in points}
        return [r for r in self if r["id"] in wanted or (searching and r["source"] == "search")]

    def add(self, record: dict[str, Any]) -> None:
        """Record a finished point (replacing an earlier record of it) and save."""
        self.records[record["id"]] = record
        self.save()

    def save(self) -> None:
        write_jsonl_atomic(self.path, self.records.values())

    def check_same_setup(self, spec: SweepSpec) -> None:
        """Base, models and merge must match sweep.json once any point has results, eval once
        any run (point, reference, baseline) has. A sweep that failed before producing results
        locks nothing: its sweep.json is replaced."""
        path = self.out / SETUP_FILE
        if not path.is_file():
            return
        try:
            earlier = json.loads(read_text(path, "sweep record"))
        except json.JSONDecodeError:
            raise L2SError(
                f"{path}: not valid JSON; remove it to start this sweep afresh"
            ) from None
        point_results = bool(self.records) or any(
            has_results(d / "run") for d in _subfolders(self.out / "points")
        )
        source_results = any(
            has_results(d) for f in ("reference", "baselines") for d in _subfolders(self.out / f)
        )
        keys = ["base", "models", "merge"] if point_results else []
        keys += ["eval"] if point_results or source_results else []
        now = spec.model_dump(mode="json")
        for key in keys:
            if key in earlier and earlier[key] != now[key]:
                where, before, after = _first_difference(earlier[key], now[key], key)
                raise L2SError(
                    f"{self.out} holds results of a sweep with {where} = {before!r}, not "
                    f"{after!r}; use another -o to keep both (points, grid, search, "
                    "selection and report may change between runs)"
                )

    def save_setup(self, spec: SweepSpec) -> None:
        write_json_atomic(self.out / SETUP_FILE, spec.model_dump(mode="json"))


def _subfolders(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []


def _first_difference(before: Any, after: Any, where: str) -> tuple[str, Any, Any]:
    """The first key path at which two sweep settings differ, e.g. ("eval.limit", 2, 3)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            if before.get(key) != after.get(key):
                return _first_difference(before.get(key), after.get(key), f"{where}.{key}")
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            if b != a:
                return _first_difference(b, a, f"{where}[{i}]")
    return where, before, after
