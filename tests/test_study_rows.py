"""The study's rows as a user runs them: a --model that is the base, LoRE and average that
return an input, the DARE presets, and the CLI's method listing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from merge_helpers import state
from tiny import make_tiny_model

from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge
from l2smerge.merge.presets import PRESETS
from l2smerge.util.errors import L2SError, L2SWarning


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    s1 = make_tiny_model(root / "s1", seed=0, layers=2, hidden=64)
    s2 = make_tiny_model(root / "s2", seed=1, base=s1, noise=0.05)
    return root, s1, s2


def _merge(out, **kwargs):
    run_merge(MergeConfig.build(**kwargs), out, progress=False, force=True)
    return state(out)


@pytest.mark.parametrize("method", ["twin", "task_arithmetic", "ties", "lore"])
def test_a_model_that_is_the_base_is_left_out_with_a_warning(pair, tmp_path, method):
    root, s1, s2 = pair
    single = _merge(tmp_path / "single", method=method, base=s1, models=[s2])
    copy = tmp_path / "s1-copy"  # the same checkpoint in another folder: same fingerprint
    shutil.copytree(s1, copy)
    for listed in (s1, copy):
        with pytest.warns(L2SWarning, match="is the --base checkpoint"):
            both = _merge(tmp_path / "both", method=method, base=s1, models=[listed, s2])
        for name in single:
            assert torch.equal(both[name], single[name]), name
    record = json.loads((tmp_path / "both" / "l2smerge.json").read_text())
    assert record["output"]["left_out_models"] == [str(copy)]
    assert [m["path"] for m in record["config"]["models"]] == [str(copy), str(s2)]  # as given


def test_twin_with_the_base_as_a_model_would_not_be_twin(pair, tmp_path):
    """What the warning prevents: kept, the zero task vector halves the add-back."""
    root, s1, s2 = pair
    single = _merge(tmp_path / "single", method="twin", base=s1, models=[s2])
    name = "model.layers.0.mlp.up_proj.weight"
    b, t = state(s1)[name], state(s2)[name]
    from l2smerge.methods.svd import twin

    assert torch.allclose(single[name], twin([t], b), atol=1e-6)
    assert not torch.allclose(twin([b, t], b), twin([t], b), atol=1e-3)


def test_every_model_being_the_base_is_refused(pair, tmp_path):
    root, s1, _ = pair
    with pytest.raises(L2SError, match="every --model is the --base"):
        run_merge(MergeConfig.build(method="ties", base=s1, models=[s1]), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_average_and_lore_warn_when_the_output_is_an_input_or_the_mean(pair, tmp_path):
    root, s1, s2 = pair
    with pytest.warns(L2SWarning, match="returns that model"):
        got = _merge(tmp_path / "a1", method="average", models=[s2])
    assert all(torch.equal(got[n], v) for n, v in state(s2).items())
    with pytest.warns(L2SWarning, match="returns that model"):
        _merge(tmp_path / "l1", method="lore", models=[s2])
    with pytest.warns(L2SWarning, match="exactly their mean"):
        lore2 = _merge(tmp_path / "l2", method="lore", models=[s1, s2], parameters={"rank": 4})
    mean = _merge(tmp_path / "mean", method="average", models=[s1, s2])
    for name in mean:
        assert torch.equal(lore2[name], mean[name]), name
    # with the base: low-rank task vectors, neither the mean nor System 2
    based = _merge(tmp_path / "lb", method="lore", base=s1, models=[s2])
    name = "model.layers.1.self_attn.o_proj.weight"
    assert not torch.allclose(based[name], mean[name], atol=1e-3)
    assert not torch.allclose(based[name], state(s2)[name], atol=1e-3)


def test_dare_ties_preset_trims_as_the_studys_script(pair, tmp_path):
    root, s1, s2 = pair
    assert PRESETS["dare_ties@7b"]["parameters"] == {"drop_rate": 0.3, "density": 0.2, "alpha": 1}
    name = "model.layers.0.mlp.down_proj.weight"
    base = state(s1)[name]
    changed = {}
    for label, extra in (("preset", {}), ("no trim", {"density": 1.0})):
        got = _merge(
            tmp_path / label, preset="dare_ties@7b", base=s1, models=[s2], parameters=extra
        )
        changed[label] = float((got[name] != base).float().mean())
    assert changed["preset"] <= 0.2 + 1e-3  # trimmed to k = 0.8 after the drop
    assert changed["no trim"] == pytest.approx(0.7, abs=0.05)  # only DARE's 30% dropped


def test_dare_preset_is_dare_then_the_average_of_system1_and_system2(pair, tmp_path):
    root, s1, s2 = pair
    kwargs = dict(base=s1, seed=3)
    dare = _merge(tmp_path / "dare", preset="dare@7b", models=[s2], **kwargs)
    manual = _merge(
        tmp_path / "manual", method="dare_ta", models=[s2],
        parameters={"drop_rate": 0.3, "alpha": 0.5}, **kwargs,
    )  # fmt: skip
    name = "model.layers.1.mlp.gate_proj.weight"
    assert torch.equal(dare[name], manual[name])
    b, t = state(s1)[name], state(s2)[name]
    kept = dare[name] != b  # the surviving entries are rescaled by 1/(1-p), then halved
    assert torch.allclose(dare[name][kept], (b + 0.5 * (t - b) / 0.7)[kept], atol=1e-6)
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.05)


def _stdout(monkeypatch, capsys, *args) -> str:
    from l2smerge.cli import main

    monkeypatch.setattr("sys.argv", ["l2smerge", *args])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    return capsys.readouterr().out


def test_version_and_methods_listing(monkeypatch, capsys):
    from l2smerge import __version__

    assert _stdout(monkeypatch, capsys, "--version").strip() == f"l2smerge {__version__}"
    listing = _stdout(monkeypatch, capsys, "methods")
    for word in ("lore", "twin", "sens", "dare_ties@7b", "dare@7b", "sens@7b", "optional"):
        assert word in listing


def test_help_texts_carry_no_planning_words(monkeypatch, capsys):
    from l2smerge.cli import app

    commands = [[], *([c.name] for c in app.registered_commands)]
    commands += [[g.name] for g in app.registered_groups]
    text = "\n".join(_stdout(monkeypatch, capsys, *c, "--help") for c in commands).lower()
    assert "--calibration" in text and "--relax-head-and-norms" in text
    for word in ("issue", "todo", "targets (", "fixme"):
        assert word not in text
