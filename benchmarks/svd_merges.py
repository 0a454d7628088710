"""Time per tensor of the SVD merges (lore, twin) against TIES on the same tensors, one run.

    python benchmarks/svd_merges.py [--rows 3584] [--cols 3584] [--models 2] [--device cpu]

A Qwen2.5-7B layer has one 3584x3584 (q_proj, o_proj), two 512x3584 (k/v) and three
3584x18944-sized (MLP) weights; multiply by 28 layers for a whole-model estimate.
"""

from __future__ import annotations

import argparse
import time

import torch

from l2smerge.methods import get_method


def timed(fn, *args, **kwargs) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3584)
    parser.add_argument("--cols", type=int, default=3584)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(args.rows, args.cols, generator=g)
    models = [
        base + 0.01 * torch.randn(args.rows, args.cols, generator=g) for _ in range(args.models)
    ]
    base, models = base.to(args.device), [m.to(args.device) for m in models]
    rows = [
        ("ties (peer)", get_method("ties").fn, (models, base), {}),
        ("twin rank 64", get_method("twin").fn, (models, base), {"rank": 64}),
        ("lore rank 64", get_method("lore").fn, (models, None), {"rank": 64}),
        ("lore threshold 0.1", get_method("lore").fn, (models, None), {}),
    ]
    print(f"{args.models} models, {args.rows}x{args.cols} float32 on {args.device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    peer = None
    for label, fn, fn_args, kwargs in rows:
        seconds = timed(fn, *fn_args, **kwargs)
        peer = peer or seconds
        print(f"{label:>20}: {seconds:7.2f} s   {seconds / peer:6.1f}x ties")


if __name__ == "__main__":
    main()
