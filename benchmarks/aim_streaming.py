"""Peak memory and time of AIM's activation statistics: streamed (one decoder layer's weights
at a time) against the whole model loaded with hooks, on the same model and data in one run.

    python benchmarks/aim_streaming.py [--hidden 1024] [--layers 8] [--samples 16]

Each mode runs in its own child process so its peak resident memory (VmHWM) is its own.
Prints both figures and the ratio; the importances of the two modes must agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
from l2smerge import calibration as cal
model, data, mode, out = sys.argv[1:5]
texts = cal.read_calibration(data, cal.METHOD_FIELDS["aim"])
start = time.perf_counter()
if mode == "imports":  # the floor: interpreter, torch, transformers, data; no statistics
    cal.tokenize(model, texts, 1024)
    imp = {}
else:
    imp = cal.activation_importance(model, texts, stream=(mode == "stream"), progress=False)
seconds = time.perf_counter() - start
torch.save(imp, out)
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, kept over exec)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": int(hwm.split()[1]) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny_model(root / "model", hidden=args.hidden, layers=args.layers)
        size_mb = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e6
        data = root / "cal.jsonl"
        rows = [
            {"question": f"What is {i} times {i + 3}? " * 8, "short_answer": str(i * (i + 3))}
            for i in range(args.samples)
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results = {}
        for mode in ("imports", "stream", "whole"):
            out = root / f"{mode}.pt"
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(model), str(data), mode, str(out)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode]["importance"] = torch.load(out)
        stream, whole = results["stream"]["importance"], results["whole"]["importance"]
        worst = max(float((stream[k] - whole[k]).abs().max()) for k in stream)
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, {size_mb:.0f} MB float32 weights"
        )
        print(f"calibration: {args.samples} samples")
        floor = results["imports"]["peak_mb"]
        print(f"imports only (floor): peak RSS {floor:.0f} MB")
        for mode in ("stream", "whole"):
            r = results[mode]
            print(
                f"{mode:>6}: peak RSS {r['peak_mb']:6.0f} MB ({r['peak_mb'] - floor:+5.0f} MB over "
                f"the floor)   time {r['seconds']:6.2f} s"
            )
        over = [results[m]["peak_mb"] - floor for m in ("stream", "whole")]
        print(
            f"memory over the floor, whole / stream: {over[1] / max(over[0], 1):.1f}x   "
            f"max |importance difference|: {worst:.2e}"
        )


if __name__ == "__main__":
    main()
