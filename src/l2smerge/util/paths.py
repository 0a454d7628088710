"""Paths as the user gave them, made absolute."""

from __future__ import annotations

import os
from pathlib import Path


def resolved(path: str | Path) -> Path:
    """`path` absolute with its symlinks resolved. A symlink loop cannot be resolved: it is
    kept as written (made absolute), and opening it later gives the error that names it."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop (RuntimeError before 3.13), a NUL
        return Path(os.path.abspath(path))
