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

import contextlib
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

from l2smerge.util.atomic import write_json_atomic
from l2smerge.util.errors import L2SError, describe_os_error, writing
from l2smerge.util.jsonl import read_json

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


def _kind(value: object) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


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


# What the `safetensors` library accepts (its Rust `Metadata::validate`), checked here too.
MAX_HEADER_BYTES = 100_000_000
_MAX_NUMEL = 2**63  # a shape whose element count does not fit in 64 bits is corrupt


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {twice!r} appears twice")
    return dict(pairs)


def _index(value: object) -> int | None:
    """A JSON non-negative integer (not a bool, not a float), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _tensor_entry(path: Path, name: str, entry: object) -> tuple[torch.dtype, tuple, int, int]:
    def bad(problem: str) -> L2SError:
        return L2SError(f"{path}: tensor {name!r}: {problem} (corrupt safetensors header)")

    if not isinstance(entry, dict):
        raise bad("its entry is not a JSON object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise bad(f"no {key!r}")
    dtype_code = entry["dtype"]
    if dtype_code not in ST_TO_TORCH:
        raise L2SError(
            f"{path}: tensor {name!r}: dtype {dtype_code!r} is not one l2smerge merges "
            f"({', '.join(ST_TO_TORCH)})"
        )
    dtype = ST_TO_TORCH[dtype_code]
    shape = entry["shape"]
    if not isinstance(shape, list) or any(_index(d) is None for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    numel = 1
    for d in shape:
        numel *= d
        if numel >= _MAX_NUMEL:
            raise bad(f"shape {shape} overflows")
    offsets = entry["data_offsets"]
    pair = isinstance(offsets, list) and len(offsets) == 2
    if not pair or any(_index(x) is None for x in offsets):
        raise bad(f"data_offsets {offsets!r} is not [begin, end] with non-negative integers")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets [{begin}, {end}] ends before it begins")
    if end - begin != numel * dtype.itemsize:
        raise bad(
            f"data_offsets [{begin}, {end}] hold {end - begin} bytes but dtype {dtype_code} "
            f"and shape {shape} need {numel * dtype.itemsize}"
        )
    return dtype, tuple(shape), begin, end


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one .safetensors file's header and check it as the `safetensors` library does:
    header length within the file and at most 100 MB, a UTF-8 JSON object, every tensor's
    dtype x shape = its byte range, and the byte ranges laid end to end from 0 covering the
    data exactly (no overlap, no gap, nothing after). One check is stricter: a tensor name
    given twice (the library keeps the last silently; which one the writer meant is unknown)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise L2SError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise L2SError(
                    f"{path}: corrupt safetensors header (says it is {n} bytes; at most "
                    f"{MAX_HEADER_BYTES} are allowed)"
                )
            if n > size - 8:
                raise L2SError(
                    f"{path}: truncated or corrupt safetensors header ({n} bytes from a file of "
                    f"{size})"
                )
            raw = f.read(n)
    except OSError as exc:
        raise L2SError(describe_os_error(exc, path, "cannot read")) from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise L2SError(
            f"{path}: corrupt safetensors header (not UTF-8 at byte {8 + exc.start})"
        ) from None
    except ValueError as exc:
        raise L2SError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise L2SError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise L2SError(
            f"{path}: corrupt safetensors header (__metadata__ must map names to strings)"
        )
    data_start = 8 + n
    entries = sorted(
        ((name, *_tensor_entry(path, name, entry)) for name, entry in header.items()),
        key=lambda e: (e[3], e[4]),
    )
    tensors: dict[str, TensorInfo] = {}
    covered = 0  # the data is the tensors' byte ranges laid end to end from 0
    for name, dtype, shape, begin, end in entries:
        if begin != covered:
            what = "overlaps the tensor before it" if begin < covered else "leaves a gap"
            raise L2SError(
                f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] {what} (expected to "
                f"begin at {covered}; corrupt safetensors header)"
            )
        covered = end
        tensors[name] = TensorInfo(name, path, data_start + begin, data_start + end, dtype, shape)
    if data_start + covered > size:
        raise L2SError(
            f"{path}: truncated: holds {size} bytes, its header needs {data_start + covered}"
        )
    if data_start + covered < size:
        raise L2SError(
            f"{path}: corrupt: {size - data_start - covered} bytes after the last tensor that "
            "no tensor covers"
        )
    return tensors, metadata


def model_roots(folder: Path) -> list[Path]:
    """Where the files of the model folder `folder` (resolved) may live: inside it, and for a
    Hugging Face hub cache snapshot (REPO/snapshots/REV/, whose files are symlinks into
    REPO/blobs/) in REPO/blobs."""
    roots = [folder]
    if folder.parent.name == "snapshots":
        roots.append(folder.parent.parent / "blobs")
    return roots


def confined(folder: Path, name: str, what: str) -> Path:
    """The file `name` of the model folder `folder`, refusing any name or symlink that leads
    outside it (an absolute path, `..`, a symlink to elsewhere or in a loop): a model folder
    must never make l2smerge read, or copy into an output, a file of yours it does not hold."""
    if not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise L2SError(f"{folder}: {what} {name!r} is not a file inside the model folder")
    path = folder / name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return path  # the caller says what is missing
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise L2SError(f"{path}: cannot open ({exc})".splitlines()[0]) from None
    roots = model_roots(folder.resolve())
    if not any(real == root or root in real.parents for root in roots):
        raise L2SError(
            f"{path}: {what} is a symlink to {real}, outside the model folder; copy the file "
            "into the folder if you mean it"
        )
    return path


class Checkpoint:
    """A Hugging Face model directory, opened lazily: headers parsed, no tensor read yet."""

    def __init__(self, path: str | Path, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.stat()
        except FileNotFoundError:
            raise L2SError(f"{self.path}: not a model directory (no such directory)") from None
        except OSError as exc:
            raise L2SError(describe_os_error(exc, self.path, "cannot open")) from None
        except ValueError:  # a NUL byte in the path
            raise L2SError(f"{str(self.path)!r}: not a valid path") from None
        if not self.path.is_dir():
            raise L2SError(f"{self.path}: not a model directory (a file, not a folder)")
        config_path = confined(self.path, "config.json", "config.json")
        if not config_path.exists():
            raise L2SError(f"{self.path}: not a model directory (no config.json)")
        if not config_path.is_file():
            raise L2SError(f"{config_path}: not a regular file")
        config = read_json(config_path, "model config")
        if not isinstance(config, dict):
            raise L2SError(f"{config_path}: a model config is a JSON object, not {_kind(config)}")
        if "text_config" in config and not isinstance(config["text_config"], (dict, type(None))):
            raise L2SError(f"{config_path}: text_config must be a JSON object")
        self.config: dict = config
        self._pickle_state: dict[str, torch.Tensor] | None = None
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[Path] = []
        if self._has(INDEX_FILE) or self._has(SINGLE_FILE):
            self._open_safetensors()
        elif self._has(PICKLE_INDEX) or self._has(PICKLE_SINGLE):
            if not allow_pickle:
                raise L2SError(
                    f"{self.path}: holds pickle weights (*.bin), which can run code when "
                    "loaded; convert to safetensors or pass --allow-pickle"
                )
            self._open_pickle()
        else:
            raise L2SError(f"{self.path}: not a model directory (no {SINGLE_FILE} or {INDEX_FILE})")

    # -- opening ------------------------------------------------------------------------
    def _has(self, name: str) -> bool:
        return os.path.lexists(self.path / name)

    def _file(self, name: str, what: str) -> Path:
        """A weight or index file of this folder, confined to it, that exists and is a file."""
        path = confined(self.path, name, what)
        if not path.exists():
            raise L2SError(f"{path}: {what} is missing")
        if not path.is_file():
            raise L2SError(f"{path}: {what} is not a file")
        return path

    def _weight_map(self, index_name: str) -> dict[str, str]:
        index_path = self._file(index_name, "shard index")
        index = read_json(index_path, "shard index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise L2SError(
                f'{index_path}: not a valid shard index (needs "weight_map": an object '
                "mapping tensor names to shard file names)"
            )
        if not weight_map:
            raise L2SError(f"{index_path}: the shard index lists no tensors")
        return weight_map

    def _open_safetensors(self) -> None:
        if self._has(INDEX_FILE):
            weight_map = self._weight_map(INDEX_FILE)
            file_names = list(dict.fromkeys(weight_map.values()))
            what = f"shard listed in {INDEX_FILE}"
        else:
            weight_map = None
            file_names = [SINGLE_FILE]
            what = "weight file"
        for file_name in file_names:
            file = self._file(file_name, what)
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
        if self._has(PICKLE_INDEX):
            file_names = list(dict.fromkeys(self._weight_map(PICKLE_INDEX).values()))
        else:
            file_names = [PICKLE_SINGLE]
        state: dict[str, torch.Tensor] = {}
        for file_name in file_names:
            file = self._file(file_name, f"shard listed in {PICKLE_INDEX}")
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


# -- writing ----------------------------------------------------------------------------------


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB', 1000000 -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m:
        raise L2SError(f"bad size {text!r}; write e.g. 5GB, 500MB or 2GiB")
    number, prefix, unit = float(m.group(1)), m.group(2), m.group(3) or "B"
    base = 1024 if unit == "IB" else 1000
    size = int(number * base ** " KMGT".index(prefix or " "))
    if size < 1:
        raise L2SError(f"bad size {text!r}: must be at least 1 byte")
    return size


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
            with writing(self.directory / self.file_names[self._shard]):
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
        self._shard = i
        with writing(self.directory / self.file_names[i]):
            self._file = open(self.directory / self.file_names[i], "wb")  # noqa: SIM115
            self._file.write(struct.pack("<Q", len(raw)))
            self._file.write(raw)

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
            with writing(self.directory / self.file_names[shard]):
                self._file.write(memoryview(data.view(torch.uint8).numpy()))
        if self._written == planned.nbytes:
            self._pos += 1
            self._written = 0

    def finish(self) -> list[Path]:
        if self._pos != len(self._queue):
            raise RuntimeError("writer finished before every planned tensor was written")
        if self._file is not None:
            with writing(self.directory / self.file_names[self._shard]):
                self._file.close()  # flushes the last buffered bytes: can fail on a full disk
            self._file = None
        if len(self.shards) > 1:
            weight_map = {t.name: self.file_names[i] for i, s in enumerate(self.shards) for t in s}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            with writing(self.directory / INDEX_FILE):
                write_json_atomic(self.directory / INDEX_FILE, index)
        return [self.directory / f for f in self.file_names]

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # the folder is removed anyway
                self._file.close()
            self._file = None


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Copy tokenizer, generation config and other small non-weight files of a model dir."""
    copied = []
    for item in sorted(source.iterdir()):
        if item.name in _NOT_COPIED or item.name.startswith("."):
            continue
        if item.name.endswith(_WEIGHT_SUFFIXES):
            continue
        item = confined(source, item.name, "file")  # no symlink out of the folder is copied
        if not item.is_file():
            continue
        try:
            shutil.copyfile(item, dest / item.name)  # contents only: modes as open() gives
        except OSError as exc:
            raise L2SError(describe_os_error(exc, dest / item.name, "cannot write")) from None
        copied.append(item.name)
    return copied
