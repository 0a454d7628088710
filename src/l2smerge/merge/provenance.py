"""What a merged model carries about its making: OUT/l2smerge.json, OUT/merge.yaml (the config
it ran, re-runnable with `l2smerge merge OUT/merge.yaml -o NEW`) and OUT/README.md (a model
card with the recipe)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import l2smerge
from l2smerge.merge.config import MergeConfig

_CHUNK = 16 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file (the value the Hugging Face Hub shows for LFS files), read with
    positioned reads into one reused buffer so the file's pages never count in our RSS."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while True:
            n = os.preadv(fd, [view], offset)
            if n == 0:
                break
            digest.update(view[:n])
            offset += n
    finally:
        os.close(fd)
    return digest.hexdigest()


def _cache_file() -> Path:
    """Known file hashes, in the l2smerge cache ($L2SMERGE_CACHE_DIR, else ~/.cache/l2smerge)."""
    root = os.environ.get("L2SMERGE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "l2smerge") / "sha256.json"


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def cached_sha256(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, reusing hashes of files unchanged (same path, size, mtime, inode)
    since they were last hashed: a sweep merges the same 15 GB inputs dozens of times."""
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
        assert isinstance(cache, dict)
    except (OSError, ValueError, AssertionError):
        cache = {}
    result = {}
    for path in paths:
        key = _file_key(path)
        if not isinstance(cache.get(key), str):
            cache[key] = file_sha256(path)
        result[path] = cache[key]
    try:  # a cache that cannot be written costs time next merge, never this one
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return result


class Fingerprinter:
    """Hashes every input weight file in a background thread while the merge runs."""

    def __init__(self, inputs: dict[str, list[Path]]) -> None:
        self.inputs = inputs
        self.result: dict[str, dict[str, Any]] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="l2smerge-fingerprint", daemon=True)

    def start(self) -> Fingerprinter:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for model, files in self.inputs.items():
                hashes = {f.name: h for f, h in cached_sha256(files).items()}
                combined = hashlib.sha256(
                    "".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())).encode()
                ).hexdigest()
                self.result[model] = {"fingerprint": f"sha256:{combined}", "files": hashes}
        except BaseException as exc:  # reported by join(), in the caller's thread
            self._error = exc

    def join(self) -> dict[str, dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.result


def write_provenance(
    out: Path,
    config: MergeConfig,
    *,
    parameters: dict[str, Any],
    fingerprints: dict[str, dict[str, Any]],
    output: dict[str, Any],
) -> None:
    """Write l2smerge.json, merge.yaml and README.md into the (temporary) output folder."""
    roles: dict[str, list[str]] = {}
    if config.base is not None:
        roles.setdefault(str(config.base), []).append("base")
    for i, m in enumerate(config.models):
        roles.setdefault(str(m.path), []).append(f"model {i + 1}")
    inputs = [
        {"path": path, "role": ", ".join(r), **fingerprints.get(path, {})}
        for path, r in roles.items()
    ]
    record = {
        "l2smerge_version": l2smerge.__version__,
        "method": config.method,
        "on": config.on,
        "parameters": parameters,
        "per_model_parameters": [m.parameters for m in config.models],
        "seed": config.seed,
        "preset": config.preset,
        "calibration": (
            {"path": str(config.calibration), "sha256": file_sha256(Path(config.calibration))}
            if config.calibration
            else None
        ),
        "inputs": inputs,
        "config_from": str(config.config_source),
        "output": output,
        "config": config.model_dump(mode="json"),
    }
    (out / "l2smerge.json").write_text(json.dumps(record, indent=2) + "\n")
    recipe = config.to_yaml()
    (out / "merge.yaml").write_text(recipe)
    (out / "README.md").write_text(_model_card(config, parameters, inputs, recipe, output))


def _model_card(
    config: MergeConfig,
    parameters: dict[str, Any],
    inputs: list[dict[str, Any]],
    recipe: str,
    output: dict[str, Any],
) -> str:
    method = config.method + (f" on {config.on}" if config.on else "")
    base = [str(config.base)] if config.base else []
    front = {
        "base_model": base + [str(m.path) for m in config.models],
        "tags": ["merge", "l2smerge"],
    }
    # YAML front matter (Hub metadata); JSON strings are valid YAML scalars.
    lines = ["---"]
    for key, value in front.items():
        lines.append(f"{key}:")
        lines.extend(f"  - {json.dumps(v)}" for v in value)
    lines += ["---", "", "# Merged model", ""]
    lines.append(
        f"Made with [l2smerge](https://github.com/) {l2smerge.__version__} by **{method}** "
        "merging (long-to-short reasoning by model merging, Wu et al. 2025, arXiv 2503.20641)."
    )
    lines += ["", "## Inputs", "", "| role | path | fingerprint |", "|---|---|---|"]
    for item in inputs:
        lines.append(f"| {item['role']} | `{item['path']}` | `{item.get('fingerprint', '-')}` |")
    lines += ["", "## Parameters", ""]
    for name, value in parameters.items():
        lines.append(f"- `{name}`: `{json.dumps(value)}`")
    lines.append(f"- `seed`: `{config.seed}`")
    lines += [
        "",
        f"Output: {output['num_tensors']} tensors, dtype {output['dtype']}, "
        f"{output['num_shards']} shard(s).",
        "",
        "## Recipe",
        "",
        "Re-run with `l2smerge merge merge.yaml -o OUT`:",
        "",
        "```yaml",
        recipe.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
