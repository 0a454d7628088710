"""Hugging Face checkpoint directories: lazy per-tensor reads, streamed sharded writes.

This module knows files and tensor names, nothing about merge methods.

Why the safetensors format is read and written here instead of through `safetensors`:
`safe_open` memory-maps whole files, and every page a merge touches then counts in the
process's resident memory until the map is closed, so reading a 15 GB model shard by shard
still shows up as gigabytes of RSS; and `save_file` needs a whole shard's tensors in memory
at once. The format is simple and documented (8-byte little-endian header length, a JSON
header of name -> dtype/shape/byte range, then raw little-endian bytes), so reading one
tensor is one positioned read into a buffer we own, and an output shard can be written by
computing its header up front from the known shapes and then streaming tensor bytes in order.
Memory therefore stays at a few copies of the largest tensor whatever the model size.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from l2smerge.util.errors import L2SError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"

# safetensors dtype codes <-> torch dtypes (the ones merges meet).
ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in ST_TO_TORCH.items()}
DTYPE_NAMES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}

# Files that are weights (never copied as "tokenizer/config files" into an output).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_NOT_COPIED = {"config.json", "README.md", "l2smerge.json", "merge.yaml", INDEX_FILE, PICKLE_INDEX}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte range, dtype and shape."""

    name: str
    file: Path
    start: int  # absolute offset of the first byte in the file
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one .safetensors file's header; check it is complete and fits the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise L2SError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise L2SError(f"{path}: truncated or corrupt safetensors header")
            raw = json.loads(f.read(n))
    except OSError as exc:
        raise L2SError(f"{path}: cannot read ({exc.strerror})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise L2SError(f"{path}: corrupt safetensors header ({exc})") from exc
    if not isinstance(raw, dict):
        raise L2SError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = raw.pop("__metadata__", None) or {}
    data_start = 8 + n
    tensors: dict[str, TensorInfo] = {}
    end_max = 0
    for name, entry in raw.items():
        try:
            dtype = ST_TO_TORCH[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise L2SError(f"{path}: tensor {name!r} has an unsupported or bad entry") from exc
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise L2SError(f"{path}: tensor {name!r}: byte range does not match its shape")
        tensors[name] = TensorInfo(name, path, data_start + begin, data_start + end, dtype, shape)
        end_max = max(end_max, end)
    if data_start + end_max > size:
        raise L2SError(
            f"{path}: truncated: holds {size} bytes, its header needs {data_start + end_max}"
        )
    return tensors, metadata


class Checkpoint:
    """A Hugging Face model directory, opened lazily: headers parsed, no tensor read yet."""

    def __init__(self, path: str | Path, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise L2SError(f"{self.path}: not a model directory (no such directory)")
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise L2SError(f"{self.path}: not a model directory (no config.json)")
        try:
            self.config: dict = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise L2SError(f"{config_path}: cannot parse ({exc})") from exc
        self._pickle_state: dict[str, torch.Tensor] | None = None
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[Path] = []
        if (self.path / INDEX_FILE).is_file() or (self.path / SINGLE_FILE).is_file():
            self._open_safetensors()
        elif (self.path / PICKLE_INDEX).is_file() or (self.path / PICKLE_SINGLE).is_file():
            if not allow_pickle:
                raise L2SError(
                    f"{self.path}: holds pickle weights (*.bin), which can run code when "
                    "loaded; convert to safetensors or pass --allow-pickle"
                )
            self._open_pickle()
        else:
            raise L2SError(f"{self.path}: not a model directory (no {SINGLE_FILE} or {INDEX_FILE})")

    # -- opening ------------------------------------------------------------------------
    def _weight_map(self, index_name: str) -> dict[str, str]:
        index_path = self.path / index_name
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            raise L2SError(f"{index_path}: not a valid shard index") from exc
        return weight_map

    def _open_safetensors(self) -> None:
        if (self.path / INDEX_FILE).is_file():
            weight_map = self._weight_map(INDEX_FILE)
            file_names = list(dict.fromkeys(weight_map.values()))
        else:
            weight_map = None
            file_names = [SINGLE_FILE]
        for file_name in file_names:
            file = self.path / file_name
            if not file.is_file():
                raise L2SError(f"{file}: shard listed in {INDEX_FILE} is missing")
            found, _ = read_safetensors_header(file)
            self.files.append(file)
            for name, info in found.items():
                if weight_map is None or weight_map.get(name) == file_name:
                    self.tensors[name] = info
        if weight_map is not None:
            for name, file_name in weight_map.items():
                if name not in self.tensors:
                    raise L2SError(
                        f"{self.path / file_name}: tensor {name!r} listed in {INDEX_FILE} "
                        "is not in the shard"
                    )

    def _open_pickle(self) -> None:
        if (self.path / PICKLE_INDEX).is_file():
            file_names = list(dict.fromkeys(self._weight_map(PICKLE_INDEX).values()))
        else:
            file_names = [PICKLE_SINGLE]
        state: dict[str, torch.Tensor] = {}
        for file_name in file_names:
            file = self.path / file_name
            if not file.is_file():
                raise L2SError(f"{file}: shard listed in {PICKLE_INDEX} is missing")
            try:
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for corrupt pickles
                raise L2SError(f"{file}: cannot load with weights_only ({exc})") from exc
            self.files.append(file)
            for name, t in loaded.items():
                state[name] = t
                self.tensors[name] = TensorInfo(
                    name, file, 0, t.numel() * t.element_size(), t.dtype, tuple(t.shape)
                )
        self._pickle_state = state

    # -- queries --------------------------------------------------------------------------
    @property
    def tie_word_embeddings(self) -> bool:
        cfg = self.config.get("text_config", self.config)
        return bool(cfg.get("tie_word_embeddings", self.config.get("tie_word_embeddings", False)))

    def names(self) -> list[str]:
        """Tensor names in storage order (file, then offset): sequential reads when merging."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(
            self.tensors, key=lambda n: (order[self.tensors[n].file], self.tensors[n].start)
        )

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise L2SError(f"{self.path}: tensor {name!r} is missing") from None

    def iter_shapes(self) -> Iterator[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape, dtype) of every tensor, in storage order, without reading data."""
        for name in self.names():
            info = self.tensors[name]
            yield name, info.shape, info.dtype

    def read(self, name: str) -> torch.Tensor:
        """One tensor, in its stored dtype, in memory this process owns (no mmap)."""
        info = self.info(name)
        if self._pickle_state is not None:
            return self._pickle_state[name].clone()
        return self._read_bytes(info, info.start, info.nbytes).view(info.dtype).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 of a tensor (along its first dimension): one positioned read."""
        info = self.info(name)
        if self._pickle_state is not None:
            return self._pickle_state[name][start:stop].clone()
        row_bytes = info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0
        data = self._read_bytes(info, info.start + start * row_bytes, (stop - start) * row_bytes)
        return data.view(info.dtype).reshape((stop - start, *info.shape[1:]))

    def _read_bytes(self, info: TensorInfo, offset: int, nbytes: int) -> torch.Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8)  # not zero-filled, unlike bytearray
        view = memoryview(buf.numpy())
        got = 0
        try:
            fd = os.open(info.file, os.O_RDONLY)
            try:
                while got < nbytes:
                    n = os.preadv(fd, [view[got:]], offset + got)
                    if n == 0:
                        break
                    got += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise L2SError(
                f"{info.file}: cannot read tensor {info.name!r} ({exc.strerror})"
            ) from exc
        if got < nbytes:
            raise L2SError(f"{info.file}: truncated while reading tensor {info.name!r}")
        return buf

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


# -- writing ----------------------------------------------------------------------------------


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB', 1000000 -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not m:
        raise L2SError(f"bad size {text!r}; write e.g. 5GB, 500MB or 2GiB")
    number, prefix, unit = float(m.group(1)), m.group(2), m.group(3) or "B"
    base = 1024 if unit == "IB" else 1000
    return int(number * base ** " KMGT".index(prefix or " "))


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class ShardedWriter:
    """Writes tensors, in a fixed planned order, into safetensors shards plus an index.

    Each shard's header is computed from the plan before its first byte is written, so a
    tensor's bytes go straight to disk as soon as it is computed: no shard is held in memory.
    """

    def __init__(self, directory: Path, plan: list[PlannedTensor], max_shard_size: int) -> None:
        self.directory = directory
        shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for t in plan:
            if shards[-1] and size + t.nbytes > max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        self.shards = shards
        n = len(shards)
        self.file_names = (
            [SINGLE_FILE]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._queue = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._pos = 0
        self._written = 0  # bytes of the current tensor written so far
        self._file = None
        self._shard = -1
        self.total_size = sum(t.nbytes for t in plan)

    def _open_shard(self, i: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.shards[i]:
            header[t.name] = {
                "dtype": TORCH_TO_ST[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors does
        self._file = open(self.directory / self.file_names[i], "wb")  # noqa: SIM115
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._shard = i

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the planned tensor `name`, whole or as consecutive blocks of rows."""
        shard, planned = self._queue[self._pos]
        whole = tuple(tensor.shape) == planned.shape
        rows_block = bool(planned.shape) and tuple(tensor.shape[1:]) == planned.shape[1:]
        if name != planned.name or not (whole or rows_block):
            raise RuntimeError(f"writer expected {planned.name} {planned.shape}, got {name}")
        if tensor.dtype != planned.dtype:
            raise RuntimeError(f"writer expected {planned.dtype} for {name}, got {tensor.dtype}")
        if shard != self._shard:
            self._open_shard(shard)
        assert self._file is not None
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        self._written += data.numel() * data.element_size()
        if self._written > planned.nbytes:
            raise RuntimeError(f"writer got more bytes than planned for {name}")
        if data.numel():
            self._file.write(memoryview(data.view(torch.uint8).numpy()))
        if self._written == planned.nbytes:
            self._pos += 1
            self._written = 0

    def finish(self) -> list[Path]:
        if self._pos != len(self._queue):
            raise RuntimeError("writer finished before every planned tensor was written")
        if self._file is not None:
            self._file.close()
            self._file = None
        if len(self.shards) > 1:
            weight_map = {t.name: self.file_names[i] for i, s in enumerate(self.shards) for t in s}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return [self.directory / f for f in self.file_names]

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Copy tokenizer, generation config and other small non-weight files of a model dir."""
    copied = []
    for item in sorted(source.iterdir()):
        if not item.is_file() or item.name in _NOT_COPIED or item.name.startswith("."):
            continue
        if item.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(item, dest / item.name)
        copied.append(item.name)
    return copied
