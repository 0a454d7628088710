"""What one `l2smerge eval` invocation records about itself in run.json (as lm-eval does): when,
with which versions of l2smerge, transformers and torch, at which git commit when l2smerge runs
from a checkout, and the full backend arguments."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import l2smerge
from l2smerge.util.redact import redact


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {
        "l2smerge": l2smerge.__version__,
        "python": platform.python_version(),
    }
    for package in ("transformers", "torch", "vllm", "math-verify"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_commit() -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout l2smerge runs from; None for an installed copy (a
    venv inside some other repository does not count: the top must hold src/l2smerge)."""
    package = Path(l2smerge.__file__).resolve().parent
    try:
        top = _git(package, "rev-parse", "--show-toplevel")
        if Path(top).resolve() / "src" / "l2smerge" != package:
            return None
        commit = _git(package, "rev-parse", "HEAD")
        dirty = bool(_git(package, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def session_record(backend: str, backend_args: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """One entry of run.json's "sessions": this invocation, its backend and `facts`."""
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git": git_commit(),
        "backend": backend,
        "backend_args": {k: _plain(v) for k, v in sorted(backend_args.items())},
        **facts,
    }


def _plain(value: Any) -> Any:
    """A backend argument as JSON: paths and loaded tokenizers by their name; text with any
    credential masked (a --base-url may hold a password)."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    name = getattr(value, "name_or_path", None)
    return str(name) if name is not None else repr(value)
