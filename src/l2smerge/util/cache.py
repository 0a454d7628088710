"""The calibration statistics cache: content fingerprints of models and files, and entries
under $L2SMERGE_CACHE_DIR keyed by them, so a sweep over ω, α or T computes a statistic once."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from l2smerge.util.errors import L2SError, describe_os_error

CACHE_VERSION = 3  # bump when a statistic's definition changes: old entries are then ignored


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def cache_dir() -> Path:
    root = os.environ.get("L2SMERGE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "l2smerge"


def cache_key(kind: str, **parts: Any) -> str:
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, **parts}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a cache entry; a cache that cannot be written costs time later, not this merge."""
    from rich.console import Console

    from l2smerge.util.atomic import write_bytes_atomic

    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        Console(stderr=True).print(
            f"[yellow]warning:[/] cannot write the calibration cache {path} ({exc.strerror}); "
            "set L2SMERGE_CACHE_DIR to a writable folder to reuse statistics",
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
