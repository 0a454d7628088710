"""End-to-end merges of tiny HF checkpoints, checked against direct state-dict computations."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from merge_helpers import cli, naive_ties, state
from tiny import make_tiny_model

from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge, tensor_generator


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("trio")
    base = make_tiny_model(root / "base", seed=0, layers=3)
    m1 = make_tiny_model(root / "m1", seed=1, base=base, noise=0.05, max_shard_size="20KB")
    m2 = make_tiny_model(root / "m2", seed=2, base=base, noise=0.05)
    return base, m1, m2


def direct(method, b, ms, name, seed=0):
    """The methods' definitions (DESIGN.md) applied to one tensor, written out plainly."""
    if method == "average":
        return sum(ms) / len(ms)
    if method == "task_arithmetic":
        return b + 0.6 * sum(m - b for m in ms)
    if method == "ties":
        return naive_ties(ms, b, [0.9] * len(ms), [0.3] * len(ms))
    g = tensor_generator(seed, name)
    dropped = []
    for m in ms:
        keep = torch.rand(m.shape, generator=g) >= 0.25
        dropped.append(b + (m - b) * keep / 0.75)
    if method == "dare_ta":
        return b + 0.6 * sum(d - b for d in dropped)
    return naive_ties(dropped, b, [0.9] * len(ms), [1.0] * len(ms))


OPTIONS = {
    "average": [],
    "task_arithmetic": ["--alpha", "0.6"],
    "ties": ["--alpha", "0.9", "--density", "0.3"],
    "dare_ta": ["--alpha", "0.6", "--drop-rate", "0.25"],
    "dare_ties": ["--alpha", "0.9", "--drop-rate", "0.25", "--density", "1.0"],
}


@pytest.mark.parametrize("method", list(OPTIONS))
def test_each_method_matches_the_direct_computation(trio, tmp_path, monkeypatch, capsys, method):
    base, m1, m2 = trio
    out = tmp_path / "out"
    code, err = cli(
        monkeypatch,
        capsys,
        "merge",
        "--base",
        base,
        "--model",
        m1,
        "--model",
        m2,
        "--method",
        method,
        *OPTIONS[method],
        "--no-progress",
        "-o",
        out,
    )
    assert code == 0, err
    sb, s1, s2, got = state(base), state(m1), state(m2), state(out)
    assert got.keys() == sb.keys()
    for name in sb:
        expected = direct(method, sb[name], [s1[name], s2[name]], name)
        assert torch.allclose(got[name], expected, atol=1e-6), name


def test_average_counts_only_the_listed_models(trio, tmp_path):
    base, m1, m2 = trio
    out = run_merge(
        MergeConfig.build(method="average", models=[m1, m2], base=base),
        tmp_path / "o",
        progress=False,
    )
    s1, s2, got = state(m1), state(m2), state(out)
    assert all(torch.allclose(got[n], (s1[n] + s2[n]) / 2, atol=1e-7) for n in got)


def test_layer_schedule_name_rules_and_per_model_values(trio, tmp_path):
    base, m1, m2 = trio
    config = tmp_path / "merge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "task_arithmetic",
                "base": str(base),
                "models": [str(m1), {"path": str(m2), "parameters": {"alpha": 0.1}}],
                "parameters": {"alpha": {"*mlp*": [0.0, 1.0], "*self_attn*": 0.3, "*": [0.2, 0.6]}},
            },
            sort_keys=False,  # rules are tried in order
        )
    )
    out = run_merge(MergeConfig.from_yaml(config), tmp_path / "out", progress=False)
    sb, s1, s2, got = state(base), state(m1), state(m2), state(out)

    def alpha1(name):
        depth = {"layers.0.": 0.0, "layers.1.": 0.5, "layers.2.": 1.0}
        d = next((v for k, v in depth.items() if k in name), 0.0 if "embed" in name else 1.0)
        if "mlp" in name:
            return d
        if "self_attn" in name:
            return 0.3
        return 0.2 + 0.4 * d

    for name in sb:
        expected = sb[name] + alpha1(name) * (s1[name] - sb[name]) + 0.1 * (s2[name] - sb[name])
        assert torch.allclose(got[name], expected, atol=1e-6), name
    # The output records the config it ran, and that config reproduces it.
    again = run_merge(MergeConfig.from_yaml(out / "merge.yaml"), tmp_path / "again", progress=False)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("arch", "dtype", "shard_in", "shard_out", "tie"),
    [
        ("qwen2", torch.bfloat16, "20KB", None, False),
        ("llama", torch.float16, None, "30KB", True),
        ("llama", torch.float32, "30KB", "40KB", False),
    ],
)
def test_output_loads_and_generates(tmp_path, arch, dtype, shard_in, shard_out, tie):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(tmp_path / "b", arch=arch, dtype=dtype, tie=tie, seed=3)
    model = make_tiny_model(tmp_path / "m", base=base, dtype=dtype, seed=4, max_shard_size=shard_in)
    config = MergeConfig.build(
        method="ties",
        models=[model],
        base=base,
        parameters={"density": 0.5},
        max_shard_size=shard_out,
    )
    out = run_merge(config, tmp_path / "out", progress=False)
    assert (out / "model.safetensors.index.json").exists() == (shard_out is not None)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == dtype
    assert ("lm_head.weight" in state(out)) == (not tie)
    tok = AutoTokenizer.from_pretrained(out)
    ids = loaded.generate(**tok("2+2=", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert ids.shape[1] > 4
    # HF's own view of the weights equals the merge.
    merged = state(out)
    params = dict(loaded.named_parameters())
    assert torch.equal(
        params["model.layers.0.mlp.up_proj.weight"], merged["model.layers.0.mlp.up_proj.weight"]
    )


def test_dtype_defaults_to_the_bases_and_can_be_set(tmp_path):
    base = make_tiny_model(tmp_path / "b", dtype=torch.bfloat16)
    model = make_tiny_model(tmp_path / "m", base=base, dtype=torch.float32, seed=1)
    out = run_merge(
        MergeConfig.build(method="task_arithmetic", models=[model], base=base),
        tmp_path / "o1",
        progress=False,
    )
    assert {t.dtype for t in state(out).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    config = MergeConfig.build(method="task_arithmetic", models=[model], base=base, dtype="float16")
    out = run_merge(config, tmp_path / "o2", progress=False)
    assert {t.dtype for t in state(out).values()} == {torch.float16}


def test_tied_base_with_untied_model_gives_an_untied_output(tmp_path):
    from transformers import AutoModelForCausalLM

    base = make_tiny_model(tmp_path / "b", tie=True)
    model = make_tiny_model(tmp_path / "m", tie=False, seed=5)  # its own lm_head
    out = run_merge(
        MergeConfig.build(
            method="task_arithmetic", models=[model], base=base, parameters={"alpha": 0.5}
        ),
        tmp_path / "o",
        progress=False,
    )
    sb, sm, got = state(base), state(model), state(out)
    embed = sb["model.embed_tokens.weight"]
    assert torch.allclose(
        got["lm_head.weight"], embed + 0.5 * (sm["lm_head.weight"] - embed), atol=1e-6
    )
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.lm_head.weight, got["lm_head.weight"])


def _grow_vocab(src, dst, rows, seed):
    """A copy of `src` whose vocabulary has `rows` extra (random) embedding/head rows."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    st = state(src)
    g = torch.Generator().manual_seed(seed)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        st[name] = torch.cat([st[name], torch.randn(rows, st[name].shape[1], generator=g)])
    for old in dst.glob("model*.safetensors*"):
        old.unlink()
    save_file(st, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vocab_size"] += rows
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_vocabulary_rule_merges_shared_rows_and_takes_the_rest_from_the_tokenizer_model(
    trio, tmp_path
):
    base, m1, _ = trio
    big = _grow_vocab(m1, tmp_path / "big", rows=8, seed=9)
    sb, sbig = state(base), state(big)
    out = run_merge(
        MergeConfig.build(
            method="task_arithmetic",
            models=[big],
            base=base,
            parameters={"alpha": 0.5},
            tokenizer_from=big,
        ),
        tmp_path / "o",
        progress=False,
    )
    got = state(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert got[name].shape[0] == 280
        expected = sb[name] + 0.5 * (sbig[name][:272] - sb[name])
        assert torch.allclose(got[name][:272], expected, atol=1e-6)
        assert torch.equal(got[name][272:], sbig[name][272:])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 280
    # Default --tokenizer-from is the base: the output keeps the base's 272 rows.
    out = run_merge(
        MergeConfig.build(method="task_arithmetic", models=[big], base=base),
        tmp_path / "o2",
        progress=False,
    )
    assert state(out)["lm_head.weight"].shape[0] == 272


def test_provenance_records_method_parameters_inputs_and_seed(trio, tmp_path):
    base, m1, m2 = trio
    config = MergeConfig.build(
        method="dare_ties", models=[m1, m2], base=base, parameters={"alpha": [0.8, 0.6]}, seed=7
    )
    out = run_merge(config, tmp_path / "o", progress=False)
    record = json.loads((out / "l2smerge.json").read_text())
    assert record["method"] == "dare_ties" and record["seed"] == 7
    assert record["parameters"] == {
        "alpha": 1.0,
        "drop_rate": 0.3,
        "density": 0.2,
        **{"weight": 1.0, "normalize": True, "rescale": "inverse", "tie_break": "l2smerge"},
    }
    assert record["per_model_parameters"] == [{"alpha": 0.8}, {"alpha": 0.6}]
    roles = {i["role"]: i for i in record["inputs"]}
    assert set(roles) == {"base", "model 1", "model 2"}
    assert roles["model 1"]["fingerprint"].startswith("sha256:")
    assert len(roles["model 1"]["files"]) > 1  # sharded input: one hash per file
    card = (out / "README.md").read_text()
    assert "dare_ties" in card and "```yaml" in card
    # Same seed, same bytes; another seed, other DARE masks.
    again = run_merge(MergeConfig.from_yaml(out / "merge.yaml"), tmp_path / "again", progress=False)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    other = run_merge(config.model_copy(update={"seed": 8}), tmp_path / "other", progress=False)
    assert (other / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


def test_preset_sets_the_studys_parameters(trio, tmp_path, monkeypatch, capsys):
    base, m1, _ = trio
    code, err = cli(
        monkeypatch,
        capsys,
        "merge",
        "--base",
        base,
        "--model",
        m1,
        "--preset",
        "ties@7b",
        "-o",
        tmp_path / "p",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "p" / "l2smerge.json").read_text())
    assert record["method"] == "ties"
    assert record["parameters"] == {
        "alpha": 1.0,
        "density": 0.2,
        **{"weight": 1.0, "normalize": True, "rescale": "none", "tie_break": "l2smerge"},
    }
    code, err = cli(
        monkeypatch,
        capsys,
        "merge",
        "--base",
        base,
        "--model",
        m1,
        "--preset",
        "ties@14b",
        "--density",
        "0.5",
        "-o",
        tmp_path / "q",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "q" / "l2smerge.json").read_text())
    assert (record["parameters"]["alpha"], record["parameters"]["density"]) == (0.5, 0.5)
    code, err = cli(
        monkeypatch,
        capsys,
        "merge",
        "--base",
        base,
        "--model",
        m1,
        "--preset",
        "ties@7b",
        "--method",
        "dare_ta",
        "-o",
        tmp_path / "r",
    )
    assert code == 2 and "conflicts with --preset" in err


def test_existing_output_needs_force(trio, tmp_path, monkeypatch, capsys):
    base, m1, _ = trio
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = ["merge", "--base", base, "--model", m1, "--method", "task_arithmetic", "-o", out]
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "already exists" in err and (out / "keep.txt").exists()
    code, err = cli(monkeypatch, capsys, *args, "--force")  # not a merge output: refused
    assert code == 2 and "only replaces an earlier l2smerge merge output" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    assert cli(monkeypatch, capsys, *args)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    code, err = cli(monkeypatch, capsys, *args, "--alpha", "0.2", "--force")  # an earlier one
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no hidden leftovers


@pytest.mark.parametrize(
    "method, parameters",
    [
        ("average", {}),
        ("task_arithmetic", {}),
        # TIES in blocks: thresholds from a first pass over the blocks, then trimmed blockwise
        ("ties", {}),
        ("ties", {"density": [0.35, 0.6], "alpha": [0.9, 0.5]}),
        ("ties", {"density": [0.0, 1.0]}),
    ],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["buffer", "streamed-trim"])
def test_blockwise_methods_in_row_blocks_give_the_same_bytes(
    trio, tmp_path, monkeypatch, method, parameters, streamed
):
    import l2smerge.merge.executor as merge_module
    import l2smerge.methods.sparsify as sparsify

    base, m1, _ = trio
    big = _grow_vocab(m1, tmp_path / "big", rows=8, seed=3)  # vocabulary rule in blocks too
    config = MergeConfig.build(
        method=method,
        models=[big, m1],
        base=base,
        tokenizer_from=big,
        dtype="bfloat16",
        parameters=parameters,
    )
    whole = run_merge(config, tmp_path / "whole", progress=False)
    monkeypatch.setattr(merge_module, "BLOCK_BYTES", 1000)  # every matrix in blocks of rows
    if streamed:  # TIES thresholds from a sampled window, not a whole-tensor buffer
        monkeypatch.setattr(sparsify, "STREAMED_TRIM_BYTES", 0)
        monkeypatch.setattr(sparsify, "MAX_SAMPLE_SHARE", 1.0)  # tiny tensors: few rows
    plan = merge_module.plan_merge(config.relative_to(tmp_path))
    assert all(j.block_rows for j in plan.jobs if len(j.shape) == 2)
    blocks = run_merge(config, tmp_path / "blocks", progress=False)
    assert (blocks / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_a_first_pass_failing_on_its_thread_names_the_tensor_and_leaves_no_output(
    trio, tmp_path, monkeypatch
):
    """TIES's first pass for the next blocked tensor runs on a thread of its own while this
    one is merged: its error reaches the caller, names its tensor, and nothing is left."""
    import l2smerge.merge.executor as merge_module
    import l2smerge.methods.task_vector as task_vector
    from l2smerge.util.errors import L2SError

    base, m1, m2 = trio
    monkeypatch.setattr(merge_module, "BLOCK_BYTES", 1000)
    trims = task_vector.magnitude_trims
    seen: list[int] = []

    def third_fails(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            raise ValueError("boom")
        return trims(*args, **kwargs)

    monkeypatch.setattr(task_vector, "magnitude_trims", third_fails)
    config = MergeConfig.build(method="ties", models=[m1, m2], base=base)
    blocked = [j.name for j in merge_module.plan_merge(config).jobs if j.block_rows]
    with pytest.raises(L2SError, match=f"tensor '{blocked[2]}': ties: boom"):
        run_merge(config, tmp_path / "o", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "method, cores, expected",
    [
        ("task_arithmetic", 2, 1),  # the read-ahead thread keeps one core busy
        ("ties", 2, 1),  # read-ahead and the next tensor's first pass: at least one thread
        ("ties", 4, 2),
        ("task_arithmetic", 16, 3),  # never more than the caller's setting
        ("dare_ta", 2, 3),  # whole tensors: the caller's setting
    ],
)
def test_blocked_merges_leave_a_core_to_each_busy_helper_thread(
    trio, tmp_path, monkeypatch, method, cores, expected
):
    import l2smerge.merge.executor as merge_module

    base, m1, m2 = trio
    monkeypatch.setattr(merge_module, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(merge_module, "_available_cores", lambda: cores)
    merge_one, seen = merge_module._merge_one, set()

    def recording(*args, **kwargs):
        seen.add(torch.get_num_threads())
        return merge_one(*args, **kwargs)

    monkeypatch.setattr(merge_module, "_merge_one", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        config = MergeConfig.build(method=method, models=[m1, m2], base=base)
        run_merge(config, tmp_path / "o", progress=False)
        assert seen == {expected}
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(before)


def test_input_hashes_are_file_sha256s_and_cached(trio, tmp_path, monkeypatch):
    import hashlib
    import os

    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    base, m1, _ = trio
    config = MergeConfig.build(method="task_arithmetic", models=[m1], base=base)
    out = run_merge(config, tmp_path / "o", progress=False)
    record = json.loads((out / "l2smerge.json").read_text())
    files = next(i for i in record["inputs"] if i["role"] == "model 1")["files"]
    for name, digest in files.items():
        assert digest == hashlib.sha256((m1 / name).read_bytes()).hexdigest()
    # merged again from the same files: no file is hashed again (the cache has each hash)
    import l2smerge.util.cache as cache_module

    hashed = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    again = run_merge(config, tmp_path / "o2", progress=False)
    assert json.loads((again / "l2smerge.json").read_text())["inputs"] == record["inputs"]
    assert hashed == []
    shard = sorted(m1.glob("*.safetensors"))[0]
    os.utime(shard)  # a file changed since (its modification time): hashed again
    run_merge(config, tmp_path / "o3", progress=False)
    assert hashed == [shard]
