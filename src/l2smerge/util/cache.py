"""The l2smerge cache, under $L2SMERGE_CACHE_DIR (default ~/.cache/l2smerge): content hashes
of files and models, and entries keyed by them, so that work on unchanged inputs is done once.

* `file_sha256`: a file's sha256; `cached_file_sha256` keeps it per (path, size, modification
  time, inode), so a sweep merging the same 15 GB inputs dozens of times hashes them once.
* `model_fingerprint`: a model folder's content fingerprint that costs milliseconds.
* Entries (`cache_key`, `load_cached_*`, `save_cached_*`): AIM's and Sens's statistics, keyed
  by the fingerprints of what they were computed from.

Entries are written atomically; a damaged entry is recomputed, never trusted; a cache that
cannot be written costs time later, never the work at hand (one warning). The LLM judge's
verdicts live in their own SQLite file under the same root (eval/judges/cache.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2smerge.util.errors import L2SError, describe_os_error

if TYPE_CHECKING:
    import torch

CACHE_VERSION = 3  # bump when a statistic's definition changes: old entries are then ignored
_CHUNK = 16 << 20


def cache_dir() -> Path:
    root = os.environ.get("L2SMERGE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "l2smerge"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (the value the Hugging Face Hub shows for LFS files), read with
    positioned reads into one reused buffer so the file's pages never count in our RSS."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(_CHUNK))
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while n := os.preadv(fd, [view], offset):
            digest.update(view[:n])
            offset += n
    finally:
        os.close(fd)
    return digest.hexdigest()


def cached_file_sha256(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, reusing the hash of a file unchanged (same path, size, mtime,
    inode) since it was last hashed. One cache entry per file, so merges running at once
    (a sweep on Ray) never lose each other's hashes."""
    result = {}
    for path in paths:
        st = path.stat()
        key = cache_key(
            "sha256", path=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
        )  # fmt: skip
        digest = load_cached_json(key)
        if not isinstance(digest, str):
            digest = file_sha256(path)
            save_cached_json(key, digest, {"path": str(path)})
        result[path] = digest
    return result


def model_fingerprint(path: str | Path) -> str:
    """A content fingerprint of a model directory that costs milliseconds, not a full hash:
    config.json, then per weight file its name, size, header and three sampled 64 KiB blocks
    (start, middle, end of the data). Two checkpoints that differ only in a few untouched
    bytes could collide; fine-tuned children of one base, or any re-saved model, do not."""
    from l2smerge.merge.checkpoint import confined

    path = Path(path)
    digest = hashlib.sha256()
    config = confined(path, "config.json", "config.json")
    if not config.is_file():
        raise L2SError(f"{path}: not a model directory (no config.json)")
    digest.update(config.read_bytes())
    # pickle weights only where there are no safetensors (eval --allow-pickle)
    weight_files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weight_files:
        raise L2SError(f"{path}: no *.safetensors weights to fingerprint")
    for file in weight_files:
        file = confined(path, file.name, "weight file")  # nothing outside the folder is read
        if not file.is_file():  # a FIFO would block the read forever
            raise L2SError(f"{file}: weight file is not a regular file")
        try:
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}".encode())
            with open(file, "rb") as fh:
                for offset in (0, max(0, size // 2 - 32768), max(0, size - 65536)):
                    fh.seek(offset)
                    digest.update(fh.read(65536))
        except OSError as exc:
            raise L2SError(describe_os_error(exc, file, "cannot read")) from None
    return digest.hexdigest()


def cache_key(kind: str, **parts: Any) -> str:
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, **parts}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


_unwritable: set[Path] = set()  # cache folders already warned about


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a cache entry; a cache that cannot be written costs time later, not this work,
    and is said once per folder."""
    from l2smerge.util.atomic import write_bytes_atomic

    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        if path.parent not in _unwritable:
            from rich.console import Console

            _unwritable.add(path.parent)
            Console(stderr=True).print(
                f"[yellow]warning:[/] cannot write the l2smerge cache {path} ({exc.strerror}); "
                "set L2SMERGE_CACHE_DIR to a writable folder to reuse statistics and hashes",
                highlight=False,
            )


def load_cached_tensors(key: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None


def save_cached_tensors(key: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    import torch
    from safetensors.torch import save

    data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    _write_atomic(
        cache_dir() / f"{key}.safetensors", save(data, metadata={"key": json.dumps(meta)})
    )


def load_cached_json(key: str) -> Any | None:
    path = cache_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError):
        return None


def save_cached_json(key: str, value: Any, meta: dict) -> None:
    _write_atomic(cache_dir() / f"{key}.json", json.dumps({"meta": meta, "value": value}).encode())
