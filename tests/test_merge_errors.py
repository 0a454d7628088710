"""Every bad input: a one-line error naming the thing at fault, exit code 2, no OUT left."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from merge_helpers import cli
from safetensors.torch import load_file, save_file
from tiny import make_tiny_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = make_tiny_model(root / "base", seed=0)
    model = make_tiny_model(root / "model", seed=1, base=base, max_shard_size="20KB")
    return base, model


def _copy_single(src, dst, edit):
    """A copy of the single-file model `src` with its state dict changed by `edit`."""
    shutil.copytree(src, dst)
    st = load_file(dst / "model.safetensors")
    edit(st)
    save_file(st, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _fails(monkeypatch, capsys, tmp_path, args, *expected):
    out = tmp_path / "out"
    code, err = cli(monkeypatch, capsys, "merge", *args, "--no-progress", "-o", out)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return lines[0]


def test_not_a_model_directory(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    nowhere = tmp_path / "nowhere"
    args = ["--base", base, "--model", nowhere, "--method", "task_arithmetic"]
    _fails(monkeypatch, capsys, tmp_path, args, str(nowhere), "not a model directory")
    args = ["--base", base, "--model", tmp_path, "--method", "task_arithmetic"]
    _fails(monkeypatch, capsys, tmp_path, args, "no config.json")


def test_missing_shard(pair, tmp_path, monkeypatch, capsys):
    base, model = pair
    broken = shutil.copytree(model, tmp_path / "broken")
    shard = sorted(broken.glob("model-*.safetensors"))[2]
    shard.unlink()
    args = ["--base", base, "--model", broken, "--method", "ties"]
    _fails(monkeypatch, capsys, tmp_path, args, shard.name, "missing")


def test_truncated_shard(pair, tmp_path, monkeypatch, capsys):
    base, model = pair
    broken = shutil.copytree(model, tmp_path / "broken")
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    args = ["--base", base, "--model", broken, "--method", "ties"]
    _fails(monkeypatch, capsys, tmp_path, args, str(shard), "truncated")


def test_tensor_missing_from_one_model(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    name = "model.layers.1.mlp.up_proj.weight"
    broken = _copy_single(base, tmp_path / "broken", lambda st: st.pop(name))
    args = ["--base", base, "--model", broken, "--method", "task_arithmetic"]
    _fails(monkeypatch, capsys, tmp_path, args, str(broken), name, "missing")


def test_extra_tensor_in_one_model(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    broken = _copy_single(base, tmp_path / "broken", lambda st: st.update(extra=torch.zeros(2)))
    args = ["--base", base, "--model", broken, "--method", "task_arithmetic"]
    _fails(monkeypatch, capsys, tmp_path, args, str(broken), "'extra'")


def test_shape_mismatch(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    name = "model.layers.0.self_attn.q_proj.weight"
    broken = _copy_single(
        base, tmp_path / "broken", lambda st: st.update({name: torch.zeros(8, 8)})
    )
    args = ["--base", base, "--model", broken, "--method", "ties"]
    _fails(monkeypatch, capsys, tmp_path, args, name, "(8, 8)", str(broken))


def test_unknown_method(pair, tmp_path, monkeypatch, capsys):
    base, model = pair
    args = ["--base", base, "--model", model, "--method", "tie"]
    _fails(monkeypatch, capsys, tmp_path, args, "unknown merge method 'tie'", "ties")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--method", "average", "--alpha", "0.5"], "no parameter 'alpha'"),
        (["--method", "ties", "--rank", "4"], "no parameter 'rank'"),
        (["--method", "dare_ta", "--drop-rate", "1.0"], "drop_rate = 1.0 is outside [0.0, 1.0)"),
        (["--method", "ties", "--density", "1.5"], "density = 1.5"),
        (["--method", "ties", "--alpha", "1,2,3"], "3 values for 1 models"),
        (["--method", "ties", "--alpha", "x"], "--alpha 'x'"),
        (["--method", "ties", "--on", "average"], "does not wrap another method"),
        (["--method", "ties", "--dtype", "int8"], "dtype"),
        (["--method", "ties", "--preset", "ties@3b"], "unknown preset 'ties@3b'"),
    ],
)
def test_bad_parameters(pair, tmp_path, monkeypatch, capsys, options, expected):
    base, model = pair
    _fails(monkeypatch, capsys, tmp_path, ["--base", base, "--model", model, *options], expected)


def test_method_needing_a_base(pair, tmp_path, monkeypatch, capsys):
    _, model = pair
    args = ["--model", model, "--method", "ties"]
    _fails(monkeypatch, capsys, tmp_path, args, "needs a base model")


def test_nan_or_inf_produced(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    name = "model.layers.0.mlp.up_proj.weight"
    low = _copy_single(base, tmp_path / "low", lambda st: st[name].fill_(-3e38))
    high = _copy_single(base, tmp_path / "high", lambda st: st[name].fill_(3e38))
    args = ["--base", low, "--model", high, "--method", "ties"]  # θk − θ0 overflows float32
    _fails(monkeypatch, capsys, tmp_path, args, name, "produced NaN/Inf", "inputs are finite")
    args = ["--base", base, "--model", high, "--method", "task_arithmetic", "--alpha", "nan"]
    _fails(monkeypatch, capsys, tmp_path, args, "alpha = nan is not a finite number")


def test_non_finite_input_found_midway_leaves_nothing(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    last = "model.norm.weight"  # written late: earlier tensors are already in the shard
    broken = _copy_single(base, tmp_path / "broken", lambda st: st[last].fill_(float("nan")))
    args = ["--base", base, "--model", broken, "--method", "task_arithmetic"]
    _fails(monkeypatch, capsys, tmp_path, args, last, "holds NaN or Inf", str(broken))
    args = ["--base", base, "--model", broken, "--method", "ties"]  # trimming must not hide it
    _fails(monkeypatch, capsys, tmp_path, args, last, "holds NaN or Inf", str(broken))


@pytest.mark.parametrize("broken_input", ["model", "base"])
@pytest.mark.parametrize("streamed", [False, True], ids=["buffer", "streamed-trim"])
def test_non_finite_input_of_a_tensor_ties_merges_in_blocks(
    pair, tmp_path, monkeypatch, capsys, broken_input, streamed
):
    """TIES checks a blocked tensor's inputs in its first pass (on the task vector), not
    again in the second: a NaN in either input is still named with its file."""
    import l2smerge.merge.executor as executor
    import l2smerge.methods.sparsify as sparsify

    monkeypatch.setattr(executor, "BLOCK_BYTES", 1000)
    if streamed:
        monkeypatch.setattr(sparsify, "STREAMED_TRIM_BYTES", 0)
        monkeypatch.setattr(sparsify, "MAX_SAMPLE_SHARE", 1.0)  # tiny tensors: few rows
    base, _ = pair
    model = make_tiny_model(tmp_path / "model", seed=1, base=base)  # one file, to edit
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(state):
        state[name][-1, -2] = float("nan")

    if broken_input == "model":
        model = broken = _copy_single(model, tmp_path / "broken", poison)
    else:
        base = broken = _copy_single(base, tmp_path / "broken", poison)
    capsys.readouterr()  # making the model printed progress bars
    args = ["--base", base, "--model", model, "--method", "ties"]
    _fails(monkeypatch, capsys, tmp_path, args, name, "holds NaN or Inf", str(broken))


def test_pickle_checkpoints_need_allow_pickle(pair, tmp_path, monkeypatch, capsys):
    base, _ = pair
    binary = tmp_path / "binary"
    binary.mkdir()
    shutil.copy(base / "config.json", binary)
    torch.save(load_file(base / "model.safetensors"), binary / "pytorch_model.bin")
    args = ["--base", base, "--model", binary, "--method", "task_arithmetic"]
    _fails(monkeypatch, capsys, tmp_path, args, str(binary), "--allow-pickle")
    code, err = cli(monkeypatch, capsys, "merge", *args, "--allow-pickle", "-o", tmp_path / "ok")
    assert code == 0, err
    assert torch.equal(
        load_file(tmp_path / "ok" / "model.safetensors")["lm_head.weight"],
        load_file(base / "model.safetensors")["lm_head.weight"],
    )


def test_bad_yaml_configs(pair, tmp_path, monkeypatch, capsys):
    base, model = pair
    config = tmp_path / "c.yaml"
    config.write_text("method: ties\nmodels: [a\nbase: b\n")
    _fails(monkeypatch, capsys, tmp_path, [config], "c.yaml", "line", "invalid YAML")
    config.write_text(json.dumps({"method": "ties", "models": [str(model)], "bse": str(base)}))
    _fails(monkeypatch, capsys, tmp_path, [config], "c.yaml", "bse")
    config.write_text(json.dumps({"method": "ties", "models": [str(model)], "base": str(base)}))
    _fails(
        monkeypatch, capsys, tmp_path, [config, "--alpha", "1"], "either a config file or options"
    )


def test_output_holding_an_input_is_refused_even_with_force(pair, monkeypatch, capsys):
    base, model = pair
    for out in (model, model.parent):
        args = ["merge", "--base", base, "--model", model, "--method", "ties", "--force", "-o", out]
        code, err = cli(monkeypatch, capsys, *args)
        assert code == 2 and "choose another output" in err
    assert (model / "config.json").exists() and (base / "config.json").exists()


def test_preset_conflicting_with_method_in_yaml(pair, tmp_path, monkeypatch, capsys):
    base, model = pair
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {"method": "dare_ta", "preset": "ties@7b", "models": [str(model)], "base": str(base)}
        )
    )
    _fails(monkeypatch, capsys, tmp_path, [config], "c.yaml", "conflicts with preset 'ties@7b'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu(pair, tmp_path, monkeypatch, capsys):
    base, model = pair
    args = ["--base", base, "--model", model, "--method", "ties", "--device", "cuda"]
    _fails(monkeypatch, capsys, tmp_path, args, "--device cuda", "no CUDA device")
