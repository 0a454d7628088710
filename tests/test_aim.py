import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from calibration_fixtures import make_family, write_calibration
from safetensors.torch import load_file

from l2smerge import calibration as cal
from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge
from l2smerge.methods import get_method
from l2smerge.methods.aim import aim, apply_importance
from l2smerge.methods.task_vector import ties
from l2smerge.util.errors import L2SError


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("aimfamily")
    base, kids = make_family(root, children=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2SMERGE_CACHE_DIR", str(root / "cache"))
        yield root, base, kids[0], write_calibration(root / "cal.jsonl")


def _tensors(n=2, shape=(6, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]


# -- the formula ---------------------------------------------------------------------------------


def test_omega_one_returns_the_input_merge_exactly():
    base, tensors = _tensors()
    importance = torch.rand(4, generator=torch.Generator().manual_seed(1))
    merged = ties(tensors, base, density=0.5)
    assert torch.equal(apply_importance(merged, base, importance, 1.0), merged)
    out = aim(tensors, base, on="ties", omega=1.0, importance=importance, density=0.5)
    assert torch.equal(out, merged)


def test_importance_scales_each_column():
    base, tensors = _tensors()
    merged = ties(tensors, base, density=0.5)
    importance = torch.tensor([0.0, 1.0, 0.5, 0.25])
    out = apply_importance(merged, base, importance, 0.4)
    delta = merged - base
    assert torch.equal(out[:, 0], merged[:, 0])  # unimportant channel: the full merge
    assert torch.allclose(out[:, 1], base[:, 1] + 0.4 * delta[:, 1])  # important: only ω of it
    assert torch.allclose(out[:, 2], base[:, 2] + (1 - 0.5 * 0.6) * delta[:, 2])
    assert torch.allclose(out[:, 3], base[:, 3] + (1 - 0.25 * 0.6) * delta[:, 3])


def test_no_importance_keeps_the_inner_merge():
    base, tensors = _tensors(shape=(10, 4))
    out = aim(tensors, base, on="task_arithmetic", omega=0.0, importance=None, alpha=0.7)
    assert torch.equal(out, get_method("task_arithmetic").fn(tensors, base, alpha=0.7))


def test_aim_on_a_random_method_passes_the_generator():
    base, tensors = _tensors()
    a = aim(tensors, base, on="dare_ta", generator=torch.Generator().manual_seed(3))
    b = aim(tensors, base, on="dare_ta", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_uses_are_clear_errors():
    base, tensors = _tensors()
    with pytest.raises(L2SError, match="does not match its importance"):
        aim(tensors, base, importance=torch.ones(5), tensor_name="w")
    with pytest.raises(L2SError, match="cannot wrap itself"):
        aim(tensors, base, on="aim_ties")
    with pytest.raises(L2SError, match="unknown parameter 'rank'"):
        aim(tensors, base, on="ties", rank=3)
    with pytest.raises(L2SError, match="omega"):
        aim(tensors, base, omega=1.5)
    with pytest.raises(L2SError, match="unknown merge method"):
        aim(tensors, base, on="nope")


def test_aim_ties_has_ties_parameters_and_omega():
    method = get_method("aim_ties")
    assert method.params == {
        "omega": 0.4,
        "calibration_fields": "question,short_answer",
        "relax_head_and_norms": False,
        **get_method("ties").params,
    }
    assert method.context == {"importance", "tensor_name"}
    assert method.prepare is not None and get_method("aim").prepare is not None


# -- through the merge executor ----------------------------------------------------------------


def _merge(root: Path, name: str, **kwargs) -> dict[str, torch.Tensor]:
    out = root / name
    run_merge(MergeConfig.build(**kwargs), out, progress=False, force=True)
    return load_file(out / "model.safetensors")


def test_merge_aim_ties_keeps_embeddings_and_omega_one_is_ties(family):
    root, base, child, calib = family
    common = dict(models=[child], base=base, parameters={"density": 0.2, "alpha": 1.0})
    plain = _merge(root, "ties", method="ties", **common)
    with_cal = dict(calibration=calib, **common)
    same = _merge(
        root,
        "aim1",
        method="aim_ties",
        **{**with_cal, "parameters": {**common["parameters"], "omega": 1.0}},
    )
    for name in plain:
        assert torch.equal(same[name], plain[name]), name
    aimed = _merge(
        root,
        "aim04",
        method="aim",
        on="ties",
        **{**with_cal, "parameters": {**common["parameters"], "omega": 0.4}},
    )
    assert torch.equal(aimed["model.embed_tokens.weight"], plain["model.embed_tokens.weight"])
    assert torch.equal(aimed["lm_head.weight"], plain["lm_head.weight"])
    assert torch.equal(aimed["model.norm.weight"], plain["model.norm.weight"])
    moved = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(aimed[moved], plain[moved])
    # by the formula, with the cached importance of the base
    importance = cal.aim_importance(base, calib, progress=False)["model.layers.0.mlp.up_proj"]
    b = load_file(base / "model.safetensors")[moved]
    assert torch.allclose(aimed[moved], apply_importance(plain[moved], b, importance, 0.4))


def test_merge_without_calibration_is_refused(family):
    root, base, child, _ = family
    config = MergeConfig.build(method="aim_ties", models=[child], base=base)
    with pytest.raises(L2SError, match="--calibration"):
        run_merge(config, root / "never", progress=False)
    assert not (root / "never").exists()


def _cli(args: list[str], monkeypatch) -> int:
    """Run the real `l2smerge` entry point in this process (a subprocess costs ~15 s of
    imports here); returns its exit code."""
    from l2smerge.cli import main

    monkeypatch.setattr(sys, "argv", ["l2smerge", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_aim_ties_end_to_end_reuses_the_cache(family, tmp_path, monkeypatch, capsys):
    root, base, child, _ = family
    calib = write_calibration(tmp_path / "cli.jsonl", [("Is 9 odd?", "yes", "9 = 2*4 + 1.")])
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    outputs = []
    for omega in ("0.4", "0.7"):
        out = tmp_path / f"aim{omega}"
        args = ["merge", "--base", str(base), "--model", str(child), "--method", "aim_ties",
                "--omega", omega, "--calibration", str(calib), "--no-progress",
                "-o", str(out)]  # fmt: skip
        assert _cli(args, monkeypatch) == 0, capsys.readouterr().err
        outputs.append(load_file(out / "model.safetensors"))
    assert len(list((tmp_path / "cache").glob("aim-*.safetensors"))) == 1  # computed once
    w = "model.layers.1.self_attn.o_proj.weight"
    assert not torch.equal(outputs[0][w], outputs[1][w])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "short_answer": "s"}\nnot json\n')
    args[args.index(str(calib))] = str(bad)
    args[args.index("-o") + 1] = str(tmp_path / "bad-out")
    capsys.readouterr()
    assert _cli(args, monkeypatch) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "bad-out").exists()


def test_aim_without_on_takes_its_default_inner_methods_options(family, tmp_path, monkeypatch):
    root, base, child, calib = family
    out = tmp_path / "aim-default"
    args = ["merge", "--base", str(base), "--model", str(child), "--method", "aim",
            "--density", "0.3", "--calibration", str(calib), "--no-progress",
            "-o", str(out)]  # fmt: skip
    assert _cli(args, monkeypatch) == 0
    record = json.loads((out / "l2smerge.json").read_text())
    assert record["parameters"]["density"] == 0.3
    # provenance fingerprints the calibration data, not only its path
    digest = hashlib.sha256(calib.read_bytes()).hexdigest()
    assert record["calibration"] == {"path": str(calib), "sha256": digest}


def test_relax_head_and_norms_as_the_reference_code(family):
    root, base, child, calib = family
    common = dict(models=[child], base=base, calibration=calib)
    params = {"density": 0.2, "alpha": 1.0, "omega": 0.4}
    plain = _merge(root, "ties-r", method="ties", **{**common, "calibration": None},
                   parameters={"density": 0.2, "alpha": 1.0})  # fmt: skip
    kept = _merge(root, "aim-keep", method="aim_ties", parameters=params, **common)
    relaxed = _merge(
        root, "aim-relax", method="aim_ties",
        parameters={**params, "relax_head_and_norms": True}, **common,
    )  # fmt: skip
    importance = cal.aim_importance(base, calib, progress=False)
    b = load_file(base / "model.safetensors")
    for name in ("lm_head.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"):
        assert torch.equal(kept[name], plain[name]), name  # the default leaves them alone
        expected = apply_importance(plain[name], b[name], importance[name[: -len(".weight")]], 0.4)
        assert torch.allclose(relaxed[name], expected), name
        assert not torch.equal(relaxed[name], plain[name]), name
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert torch.equal(relaxed[name], plain[name]), name  # embeddings, biases: never
    linear = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(relaxed[linear], kept[linear])
