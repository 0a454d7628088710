"""Checkpoint reading and streamed shard writing against the safetensors library."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import make_tiny_model

from l2smerge.merge.checkpoint import (
    Checkpoint,
    PlannedTensor,
    ShardedWriter,
    copy_side_files,
    parse_size,
)
from l2smerge.util.errors import L2SError


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return make_tiny_model(
        tmp_path_factory.mktemp("ck") / "sharded", dtype=torch.bfloat16, max_shard_size="20KB"
    )


def _state(path):
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = set(json.loads(index.read_text())["weight_map"].values())
        state = {}
        for f in files:
            state.update(load_file(path / f))
        return state
    return load_file(path / "model.safetensors")


def test_reads_every_tensor_of_a_sharded_checkpoint(sharded):
    ckpt = Checkpoint(sharded)
    state = _state(sharded)
    assert len(ckpt.files) > 1
    assert set(ckpt.names()) == set(state)
    for name, shape, dtype in ckpt.iter_shapes():
        t = ckpt.read(name)
        assert (tuple(t.shape), t.dtype) == (shape, dtype)
        assert torch.equal(t, state[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reads_single_file_checkpoints_in_each_dtype(tmp_path, dtype):
    path = make_tiny_model(tmp_path / "m", dtype=dtype, tie=True)
    ckpt = Checkpoint(path)
    assert ckpt.tie_word_embeddings and "lm_head.weight" not in ckpt
    for name, t in _state(path).items():
        assert torch.equal(ckpt.read(name), t)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(L2SError, match="no such directory"):
        Checkpoint(tmp_path / "nope")
    with pytest.raises(L2SError, match="no config.json"):
        Checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(L2SError, match="no model.safetensors"):
        Checkpoint(tmp_path)


def test_missing_and_truncated_shards(tmp_path):
    path = make_tiny_model(tmp_path / "m", max_shard_size="20KB")
    shards = sorted(path.glob("model-*.safetensors"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:-10])
    with pytest.raises(L2SError, match=f"{shards[1].name}: truncated"):
        Checkpoint(path)
    shards[1].unlink()
    with pytest.raises(L2SError, match=f"{shards[1].name}: shard listed .* is missing"):
        Checkpoint(path)


def test_pickle_refused_unless_allowed(tmp_path):
    src = make_tiny_model(tmp_path / "m")
    dst = tmp_path / "bin"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = _state(src)
    torch.save(state, dst / "pytorch_model.bin")
    with pytest.raises(L2SError, match="pickle.*--allow-pickle"):
        Checkpoint(dst)
    ckpt = Checkpoint(dst, allow_pickle=True)
    for name, t in state.items():
        assert torch.equal(ckpt.read(name), t)


def test_sharded_writer_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(10, 7, generator=g).to(torch.bfloat16),
        "b": torch.randn(3, generator=g),
        "c": torch.randn(4, 4, generator=g).to(torch.float16),
        "empty": torch.zeros(0, 4),
        "d": torch.arange(5),
    }
    plan = [PlannedTensor(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardedWriter(tmp_path, plan, max_shard_size=100)
    for n, t in tensors.items():
        writer.write(n, t)
    files = writer.finish()
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    back = _state(tmp_path)
    assert back.keys() == tensors.keys()
    for n, t in tensors.items():
        assert torch.equal(back[n], t)


def test_single_shard_writer_output_matches_safetensors_reader(tmp_path):
    t = {"x": torch.randn(5, 3), "y": torch.randn(2)}
    writer = ShardedWriter(
        tmp_path, [PlannedTensor(n, tuple(v.shape), v.dtype) for n, v in t.items()], 10**9
    )
    for n, v in t.items():
        writer.write(n, v)
    assert writer.finish() == [tmp_path / "model.safetensors"]
    save_file(t, tmp_path / "ref.safetensors")
    assert _state(tmp_path).keys() == load_file(tmp_path / "ref.safetensors").keys()


def test_writer_refuses_out_of_plan_tensors(tmp_path):
    writer = ShardedWriter(tmp_path, [PlannedTensor("x", (2,), torch.float32)], 10**9)
    with pytest.raises(RuntimeError, match="expected x"):
        writer.write("y", torch.zeros(2))
    writer.abort()


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("100") == 100
    with pytest.raises(L2SError, match="bad size"):
        parse_size("lots")


def test_copy_side_files_skips_weights(tmp_path, sharded):
    copied = copy_side_files(sharded, tmp_path)
    assert "tokenizer.json" in copied and "generation_config.json" in copied
    assert not any(n.endswith(".safetensors") or n == "config.json" for n in copied)
    assert "model.safetensors.index.json" not in copied


# -- corrupt safetensors: refused exactly when the safetensors library refuses ---------------


def _st_file(tmp_path, name, edit=None, *, raw_header=None, length=None, data=None):
    """A small safetensors file from the library, with its header (a dict) and data edited."""
    path = tmp_path / "ok.safetensors"
    if not path.exists():
        tensors = {"a": torch.randn(2, 3), "b": torch.randn(4).to(torch.bfloat16)}
        save_file({**tensors, "c": torch.arange(2)}, path, metadata={"format": "pt"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, payload = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    order = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    if edit is not None:
        edited = edit(header, order, payload)  # may return new data bytes
        payload = edited if isinstance(edited, bytes) else payload
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    out = tmp_path / f"{name}.safetensors"
    out.write_bytes(
        struct.pack("<Q", len(text) if length is None else length)
        + text
        + (payload if data is None else data)
    )
    return out


def _offsets(name_index, shift_begin, shift_end):
    def edit(header, order, payload):
        a, b = header[order[name_index]]["data_offsets"]
        header[order[name_index]]["data_offsets"] = [a + shift_begin, b + shift_end]

    return edit


def _set(name_index, key, value):
    def edit(header, order, payload):
        header[order[name_index]][key] = value

    return edit


def _gap_before_the_data(header, order, payload):
    for name in order:  # every range moved 8 bytes on: the first 8 data bytes belong to none
        header[name]["data_offsets"] = [x + 8 for x in header[name]["data_offsets"]]
    return b"\0" * 8 + payload


CORRUPT = {
    "overlap": _offsets(1, -4, -4),
    "negative_offsets": _offsets(0, -8, -8),
    "begin_after_end": lambda h, o, p: h[o[0]].update(data_offsets=h[o[0]]["data_offsets"][::-1]),
    "bytes_after_the_last_tensor": lambda h, o, p: p + b"\0" * 8,
    "gap": _gap_before_the_data,
    "truncated": lambda h, o, p: p[:-4],
    "dtype_times_shape": _set(1, "dtype", "F16"),
    "negative_shape": _set(1, "shape", [-2, -3]),
    "float_shape": _set(2, "shape", [4.0]),
    "string_shape": _set(2, "shape", ["4"]),
    "bool_shape": _set(2, "shape", [True, 4]),
    "shape_overflow": lambda h, o, p: h.update(
        z={"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [len(p), len(p)]}
    ),
    "unknown_dtype": _set(0, "dtype", "Q4"),
    "missing_shape": lambda h, o, p: h[o[0]].pop("shape"),
    "three_offsets": _set(0, "data_offsets", [0, 16, 0]),
    "null_offsets": _set(0, "data_offsets", None),
    "entry_not_an_object": lambda h, o, p: h.update(z=5),
    "metadata_not_strings": lambda h, o, p: h.update(__metadata__={"format": "pt", "n": 5}),
    "metadata_a_list": lambda h, o, p: h.update(__metadata__=["format"]),
}
VALID = {
    "as_written": None,
    "zero_size_tensor": lambda h, o, p: h.update(
        z={"dtype": "F32", "shape": [0, 5], "data_offsets": [len(p), len(p)]}
    ),
    "no_metadata": lambda h, o, p: h.pop("__metadata__"),
}


def _library_accepts(path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                f.get_tensor(name)
    except Exception:  # the library raises SafetensorError, ValueError, ... per case
        return False
    return True


@pytest.mark.parametrize("case", sorted(CORRUPT) + sorted(VALID))
def test_header_checks_match_the_safetensors_library(tmp_path, case):
    from l2smerge.merge.checkpoint import read_safetensors_header

    path = _st_file(tmp_path, case, CORRUPT.get(case) or VALID.get(case))
    assert _library_accepts(path) == (case in VALID)
    if case in VALID:
        tensors, _ = read_safetensors_header(path)
        assert set(tensors) >= {"a", "b", "c"}
    else:
        with pytest.raises(L2SError, match=str(path)):
            read_safetensors_header(path)


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"),
    [
        ("length_beyond_file", {"length": 10**6}, "truncated or corrupt"),
        ("length_over_100mb", {"length": 2**63}, "at most 100000000"),
        ("not_utf8", {"raw_header": b'{"__metadata__": {"f": "\xff"}}'}, "not UTF-8"),
        ("a_list", {"raw_header": b"[1, 2]"}, "not a JSON object"),
        ("not_json", {"raw_header": b"{not json"}, "corrupt safetensors header"),
        ("shorter_than_8_bytes", {"raw_header": b"", "length": 0, "data": b""}, None),
    ],
)
def test_broken_headers(tmp_path, case, kwargs, expected):
    from l2smerge.merge.checkpoint import read_safetensors_header

    path = _st_file(tmp_path, case, **kwargs)
    if case == "shorter_than_8_bytes":
        path.write_bytes(b"\x01\x02")
        expected = "shorter than 8 bytes"
    assert not _library_accepts(path)
    with pytest.raises(L2SError, match=expected):
        read_safetensors_header(path)


def test_a_tensor_named_twice_is_refused(tmp_path):
    """Stricter than the library, which keeps the last of two entries silently."""
    from l2smerge.merge.checkpoint import read_safetensors_header

    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    text = f'{{"x": {json.dumps(entry)}, "x": {json.dumps(entry)}}}'.encode()
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 4)
    with pytest.raises(L2SError, match="'x' appears twice"):
        read_safetensors_header(path)
