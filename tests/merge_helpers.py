"""Helpers shared by the merge tests: the TIES definition written out naively, a model's
tensors, and the real `l2smerge` entry point run in-process."""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import load_file

from l2smerge.cli import main


def naive_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Full sort: keep every entry at least as large as the keep-th largest magnitude."""
    flat = delta.flatten()
    keep = round(density * flat.numel())
    if keep == 0:
        return torch.zeros_like(delta)
    threshold = flat.abs().sort(descending=True).values[keep - 1]
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def naive_ties(tensors, base, alphas, densities):
    deltas = torch.stack(
        [a * naive_trim(t - base, d) for t, a, d in zip(tensors, alphas, densities, strict=True)]
    )
    sign = torch.sign(deltas.sum(0))
    agree = (torch.sign(deltas) == sign) & (deltas != 0)
    mean = (deltas * agree).sum(0) / agree.sum(0).clamp(min=1)
    return base + mean


def state(path):
    index = path / "model.safetensors.index.json"
    if index.exists():
        out = {}
        for f in set(json.loads(index.read_text())["weight_map"].values()):
            out.update(load_file(path / f))
        return out
    return load_file(path / "model.safetensors")


def cli(monkeypatch, capsys, *args):
    """Run the real `l2smerge` entry point in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["l2smerge", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().err
