"""Peak memory and time of Sens-Merging's statistics: streamed (one part of the model at a
time) against the whole model in float32 with its gradients, on a Qwen2.5-0.5B-shaped pair,
plus the whole `l2smerge merge --method sens` command; then a projection to 7B/14B/32B.

    python benchmarks/sens_memory.py [--samples 8] [--repeat 1] [--models 1] [--layers 24]
                                     [--workdir /tmp/l2s-merge-bench]

The pair (base + model1) is the synthetic Qwen2.5-0.5B-shaped trio of merge_speed.py (random
bfloat16 weights with the real tensor shapes, tied embeddings), built once under --workdir,
with a byte-level tokenizer (tests/tiny.py) or --tokenizer DIR. Calibration: --samples
s1K-style lines (question, short answer, long answer), all three fields, as Sens uses them.
Every measurement runs in a fresh child process with an empty statistics cache, and reads its
own peak RSS (VmHWM) at the end. --models 2 also measures the cross-task alignment of
model1 and model2 (streamed and whole).

Targets (issue 14): streamed peak RSS <= 0.25x the whole-model path's, <= 1.5 GB for the
merge command, equal statistics, streamed time <= 1.3x the whole-model path's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from merge_speed import SHAPES  # noqa: E402

CHILD = r"""
import json, sys, time
mode, base, model, other, data, out = sys.argv[1:7]
start = time.perf_counter()
result = {}
if mode == "merge":
    from l2smerge.cli import main
    sys.argv = ["l2smerge", "merge", "--base", base, "--model", model, "--method", "sens",
                "--calibration", data, "--no-progress", "-o", out]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise
else:
    import torch
    from l2smerge import calibration as cal
    samples = cal.read_calibration(data, cal.METHOD_FIELDS["sens"])
    if mode == "imports":  # the floor: interpreter, torch, transformers, tokenizer, data
        cal.tokenize(model, samples, cal.DEFAULT_MAX_TOKENS)
    elif mode.startswith("sens-"):
        result["stats"] = cal.task_sensitivity(
            model, base, samples, stream=(mode == "sens-stream"), progress=False)
    else:
        result["stats"] = cal.cross_task_alignment(
            [model, other], [samples, samples], stream=(mode == "align-stream"), progress=False)
result["seconds"] = time.perf_counter() - start
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, kept over exec)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
result["peak_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(result))
"""

# The study's pairs' shapes (Qwen2.5 configs; untied heads from 3B up).
PROJECTED = {
    "7B": dict(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064),
    "14B": dict(hidden=5120, intermediate=13824, layers=48, heads=40, kv_heads=8, vocab=152064),
    "32B": dict(hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, vocab=152064),
}
GB = 1e9


def calibration_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 17 + 7 * i, 29 + 11 * i
        rows.append(
            {
                "question": f"A shop sells {a} boxes of {b} pencils each. How many pencils?",
                "short_answer": f"{a} * {b} = {a * b}. The answer is {a * b}.",
                "long_answer": (
                    f"We multiply {a} by {b}. {a} * {b} = {a * b - b} + {b} = {a * b}. Wait, "
                    f"let me double-check: {b} * {a} = {a * b}. Yes. So the shop sells "
                    f"{a * b} pencils. The answer is {a * b}."
                ),
            }
        )
    return rows


def layer_params(s: dict) -> tuple[int, int]:
    """(parameters of one decoder layer, of its largest tensor) for Qwen2 shapes."""
    h, i, q, kv = s["hidden"], s["intermediate"], s["heads"] * 128, s["kv_heads"] * 128
    if "head_dim" in s:
        q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    tensors = [h * q + q, 2 * (h * kv + kv), q * h, 3 * h * i, 2 * h]
    return sum(tensors), h * i


def projected_peak(s: dict, tokens: int, samples: int) -> dict[str, float]:
    """Bytes the streamed sensitivities hold at their peak, from the part sizes, for texts of
    `tokens` tokens (float32 math, bfloat16 checkpoints). The largest part wins: a decoder
    layer (float32 weights + one text's gradients + δ in bf16 + |δ ⊙ g| temporaries of its
    largest tensor + the recomputed layer's saved activations) or the output head's stage
    (one block of rows, at most 16 MB in float32, with δ and its gradient, each text's logits
    on it, and each text's final hidden state, its gradient and the norm's saved input), plus
    the chunk's boundary hidden states (calibration budget, 1 GB, or one text's when larger)
    and the gradients in flight. CPU staging: the two checkpoints'
    bf16 reads of the largest tensor."""
    h, i, n_layers = s["hidden"], s["intermediate"], s["layers"]
    p_layer, p_max = layer_params(s)
    heads = s["heads"]
    activations = 4 * tokens * (10 * h + 5 * i) + 4 * tokens * tokens * heads
    layer_stage = 4 * p_layer + 4 * p_layer + 2 * p_layer + 8 * p_max + activations
    block = 16 << 20
    block_rows = block // (4 * h)
    per_text = 4 * tokens * h * (n_layers + 2)
    boundaries = min(samples * per_text, max(1 << 30, per_text))
    texts = max(1, boundaries // per_text)  # in one chunk
    head_stage = 3 * block + texts * (4 * tokens * block_rows + 3 * 4 * tokens * h)
    device = max(layer_stage, head_stage) + boundaries + 4 * tokens * h * 2
    staging = 2 * 2 * p_max
    return {
        "layer_stage": layer_stage,
        "head_stage": head_stage,
        "boundaries": boundaries,
        "device": device,
        "staging": staging,
        "whole_model": (4 + 4 + 2) * model_params(s) + activations * n_layers,
    }


def model_params(s: dict) -> int:
    p_layer, _ = layer_params(s)
    untied = 1 if s.get("untied", True) else 0
    return s["layers"] * p_layer + (1 + untied) * s["vocab"] * s["hidden"] + s["hidden"]


def run_child(mode: str, paths: dict, data: Path, out: Path, cache: Path) -> dict:
    env = dict(os.environ, L2SMERGE_CACHE_DIR=str(cache))
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        mode,
        str(paths["base"]),
        str(paths["model1"]),
        str(paths["model2"]),
        str(data),
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_tokenizer(paths: dict, tokenizer: Path | None) -> None:
    for name in ("base", "model1", "model2"):
        target = paths[name]
        if tokenizer is not None:
            for f in tokenizer.iterdir():
                if f.is_file() and f.name.startswith(("tokenizer", "vocab", "merges", "special")):
                    shutil.copy2(f, target / f.name)
        elif not (target / "tokenizer.json").exists():
            sys.path.insert(0, str(HERE.parents[1] / "tests"))
            from tiny import byte_tokenizer

            byte_tokenizer().save_pretrained(target)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/l2s-merge-bench"))
    ap.add_argument("--samples", type=int, default=8, help="calibration lines")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode (time: the best)")
    ap.add_argument("--models", type=int, choices=(1, 2), default=1, help="2: alignment too")
    ap.add_argument("--layers", type=int, default=SHAPES["layers"], help="fewer for a quick run")
    ap.add_argument("--tokenizer", type=Path, help="a tokenizer directory to use (default bytes)")
    ap.add_argument("--no-merge", action="store_true", help="skip the merge command")
    args = ap.parse_args()
    shapes = {**SHAPES, "layers": args.layers}

    trio_dir = args.workdir / "trio"
    subprocess.run(
        [
            sys.executable,
            str(HERE.parent / "merge_speed.py"),
            "--build-trio",
            str(trio_dir),
            "--layers",
            str(args.layers),
        ],
        check=True,
    )
    paths = {n: trio_dir / n for n in ("base", "model1", "model2")}
    add_tokenizer(paths, args.tokenizer)
    modes = ["imports", "sens-stream", "sens-whole"]
    if args.models == 2:
        modes += ["align-stream", "align-whole"]
    if not args.no_merge:
        modes.append("merge")

    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "calibration.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in calibration_rows(args.samples)))
        print(f"load average before: {load_average()}", flush=True)
        for repeat in range(args.repeat):
            for mode in modes:
                r = run_child(mode, paths, data, root / "merged", root / "cache")
                r["load"] = load_average()
                results[mode].append(r)
                print(
                    f"  [{repeat + 1}/{args.repeat}] {mode:12s} {r['seconds']:8.1f} s  "
                    f"peak RSS {r['peak_mb']:7.0f} MB   load {r['load']}",
                    flush=True,
                )
        ids_tokens = None
        try:
            sys.path.insert(0, str(HERE.parents[1] / "src"))
            from l2smerge import calibration as cal

            samples = cal.read_calibration(data, cal.METHOD_FIELDS["sens"])
            ids_tokens = [t.numel() for t in cal.tokenize(paths["model1"], samples, 1024)]
        except Exception:  # noqa: BLE001 - token counts are only reported
            pass

    def best(mode: str) -> dict:
        runs = results[mode]
        return {
            "seconds": min(r["seconds"] for r in runs),
            "peak_mb": max(r["peak_mb"] for r in runs),
        }

    floor = best("imports")["peak_mb"]
    stream, whole = best("sens-stream"), best("sens-whole")
    s_stats, w_stats = results["sens-stream"][0]["stats"], results["sens-whole"][0]["stats"]
    worst = max(abs(s_stats[k] - w_stats[k]) / max(abs(w_stats[k]), 1e-30) for k in w_stats)
    print(f"\nshapes: {shapes}")
    print(f"calibration: {args.samples} texts, tokens per text {ids_tokens}")
    print(f"imports only (floor): peak RSS {floor:.0f} MB")
    for mode in modes[1:]:
        r = best(mode)
        print(
            f"{mode:>12}: peak RSS {r['peak_mb']:6.0f} MB ({r['peak_mb'] - floor:+6.0f} MB over "
            f"the floor)   time {r['seconds']:7.1f} s"
        )
    print(f"sensitivities: max relative difference stream vs whole {worst:.1e}")
    print(f"peak RSS stream / whole: {stream['peak_mb'] / whole['peak_mb']:.3f}  (target <= 0.25)")
    print(f"time stream / whole:     {stream['seconds'] / whole['seconds']:.3f}  (target <= 1.3)")
    if "merge" in results:
        print(
            f"merge --method sens peak RSS: {best('merge')['peak_mb'] / 1000:.2f} GB "
            "(target <= 1.5 GB)"
        )
    if args.models == 2:
        a, b = results["align-stream"][0]["stats"], results["align-whole"][0]["stats"]
        diff = max(abs(a[i][j] - b[i][j]) for i in range(2) for j in range(2))
        s_run, w_run = best("align-stream"), best("align-whole")
        print(
            f"alignment: max |difference| stream vs whole {diff:.1e}; peak RSS "
            f"{s_run['peak_mb']:.0f} vs {w_run['peak_mb']:.0f} MB, "
            f"time {s_run['seconds']:.1f} vs {w_run['seconds']:.1f} s"
        )

    tokens = max(ids_tokens) if ids_tokens else 256
    here = projected_peak({**shapes, "untied": False}, tokens, args.samples)
    print(
        f"\nprojection check on this pair ({tokens} tokens): streamed {here['device'] / 1e6:.0f}"
        f" MB + staging {here['staging'] / 1e6:.0f} MB (measured "
        f"{stream['peak_mb'] - floor:.0f} MB over the floor), whole model "
        f"{here['whole_model'] / 1e6:.0f} MB (measured {whole['peak_mb'] - floor:.0f})"
    )
    print(
        "projected peak of the streamed sensitivities (100 texts of 1,024 tokens, float32, "
        "bf16 checkpoints):"
    )
    print(
        f"  {'model':5s} {'layer part':>10s} {'head part':>10s} {'boundaries':>10s} "
        f"{'GPU (cuda)':>10s} {'CPU RAM':>8s} {'whole model':>11s}"
    )
    for label, s in PROJECTED.items():
        p = projected_peak(s, 1024, 100)
        cpu = p["staging"] + 4 * GB  # + the process (CUDA libraries, torch, transformers)
        print(
            f"  {label:5s} {p['layer_stage'] / GB:9.1f}G {p['head_stage'] / GB:9.1f}G "
            f"{p['boundaries'] / GB:9.1f}G {p['device'] / GB:9.1f}G {cpu / GB:7.1f}G "
            f"{p['whole_model'] / GB:10.0f}G"
        )
    p32 = projected_peak(PROJECTED["32B"], 1024, 100)
    fits = p32["device"] < 24 * GB and p32["staging"] + 4 * GB < 64 * GB
    print(f"32B fits a 24 GB GPU with <= 64 GB of CPU RAM: {'yes' if fits else 'NO'}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
