"""The saved recipe (OUT/merge.yaml) is what is merged, never how: device, shard size and
pickle permission are run options, so a recipe made on a GPU reruns on a CPU."""

from __future__ import annotations

import json

import torch
import yaml
from merge_helpers import cli, state
from tiny import make_tiny_model

from l2smerge.merge.config import RUN_OPTIONS, MergeConfig


def test_merge_yaml_holds_the_recipe_and_run_options_apply_beside_it(tmp_path, monkeypatch, capsys):
    base = make_tiny_model(tmp_path / "base", seed=0, layers=1)
    model = make_tiny_model(tmp_path / "model", base=base, seed=1, noise=0.05)
    args = ["merge", "--base", base, "--model", model, "--method", "ties", "--density", "0.5"]
    code, err = cli(monkeypatch, capsys, *args, "--device", "cpu", "--max-shard-size", "20KB",
                    "-o", tmp_path / "out")  # fmt: skip
    assert code == 0, err
    recipe = yaml.safe_load((tmp_path / "out" / "merge.yaml").read_text())
    assert recipe["method"] == "ties" and recipe["parameters"] == {"density": 0.5}
    assert not set(RUN_OPTIONS) & set(recipe)
    record = json.loads((tmp_path / "out" / "l2smerge.json").read_text())
    assert record["options"] == {"device": "cpu", "max_shard_size": "20KB", "allow_pickle": False}
    assert not set(RUN_OPTIONS) & set(record["config"])
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()  # sharded as asked
    # a recipe written on a GPU machine (older files saved the device in it) ...
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({**recipe, "device": "cuda", "max_shard_size": "1GB"}))
    loaded = MergeConfig.from_yaml(gpu)
    assert loaded.options.device == "cuda" and "device" not in loaded.to_yaml()
    # ... reruns here with the run options given beside it
    code, err = cli(monkeypatch, capsys, "merge", gpu, "--device", "cpu", "-o", tmp_path / "cpu")
    assert code == 0, err
    merged, again = state(tmp_path / "out"), state(tmp_path / "cpu")
    assert all(torch.equal(merged[n], again[n]) for n in merged)
    assert not (tmp_path / "cpu" / "model.safetensors.index.json").exists()  # its 1GB shards
    # the recipe's own settings still cannot be mixed with options
    code, err = cli(monkeypatch, capsys, "merge", gpu, "--density", "0.2", "-o", tmp_path / "x")
    assert code == 2 and "either a config file or options" in err
