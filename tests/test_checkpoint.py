"""Checkpoint reading and streamed shard writing against the safetensors library."""

from __future__ import annotations

import json

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
