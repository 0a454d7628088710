"""A merge killed mid-way leaves no OUT (only a hidden partial folder that the next run
removes), and rerunning succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_tiny_model

from l2smerge.merge.config import MergeConfig
from l2smerge.merge.executor import run_merge


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    # Large enough (~40 MB each) that a TIES merge takes a noticeable fraction of a second.
    root = tmp_path_factory.mktemp("big")
    base = make_tiny_model(root / "base", hidden=384, layers=8, seed=0)
    model = make_tiny_model(root / "model", base=base, seed=1)
    return base, model


def _start(base, model, out):
    cmd = [sys.executable, "-m", "l2smerge", "merge", "--base", str(base), "--model", str(model),
           "--method", "ties", "--no-progress", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _stop_midway(proc, out):
    """Freeze the merge as soon as its partial folder holds shard bytes; return that folder."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        partial = list(out.parent.glob(f".{out.name}.partial-*"))
        shards = [f for p in partial for f in p.glob("*.safetensors")]
        if shards and shards[0].stat().st_size > 0:
            proc.send_signal(signal.SIGSTOP)
            return partial[0]
        if proc.poll() is not None:
            pytest.fail(f"merge ended before it could be interrupted: {proc.stderr.read()!r}")
        time.sleep(0.002)
    pytest.fail("merge never started writing")


def test_killed_merge_leaves_no_out_and_rerun_succeeds(big_pair, tmp_path):
    base, model = big_pair
    out = tmp_path / "out"
    proc = _start(base, model, out)
    partial = _stop_midway(proc, out)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert not out.exists()
    assert partial.exists()  # what a hard kill leaves: hidden, never named OUT

    config = MergeConfig.build(method="ties", models=[model], base=base)
    run_merge(config, out, progress=False)
    assert not partial.exists()  # the dead run's leftovers were removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    got = load_file(out / "model.safetensors")
    assert got.keys() == load_file(base / "model.safetensors").keys()
    assert all(torch.isfinite(t).all() for t in got.values())


def test_terminated_merge_cleans_up_after_itself(big_pair, tmp_path):
    base, model = big_pair
    out = tmp_path / "out"
    proc = _start(base, model, out)
    _stop_midway(proc, out)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []
