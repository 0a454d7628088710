"""The LLM judge's verdict cache: one SQLite file under $L2SMERGE_CACHE_DIR/judge/, one row
per (judge model, judge prompt, response, key point), so a rerun, a resume or a new report
asks the judge nothing it has answered before. Judge errors are never stored."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from l2smerge.util.cache import cache_dir
from l2smerge.util.errors import L2SError

CACHE_FILE = "verdicts.sqlite3"


def default_cache_dir() -> Path:
    """judge/ in the l2smerge cache ($L2SMERGE_CACHE_DIR, else ~/.cache/l2smerge)."""
    return cache_dir() / "judge"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verdict_key(judge_model: str, prompt_hash: str, response: str, point: str) -> str:
    return sha256(json.dumps([judge_model, prompt_hash, sha256(response), point]))


class VerdictCache:
    """A key -> JSON value store. Used from one thread; SQLite serialises writers from other
    processes (two evals judging at once share the file safely)."""

    def __init__(self, directory: str | Path | None = None):
        directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = directory / CACHE_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60)
            with self.db:
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, value TEXT)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise L2SError(
                f"cannot open the judge cache {self.path} ({exc}); set L2SMERGE_CACHE_DIR to a "
                "writable folder or pass --judge-cache DIR"
            ) from None

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        rows = [(k, json.dumps(v, ensure_ascii=False)) for k, v in entries.items()]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        self.db.close()
