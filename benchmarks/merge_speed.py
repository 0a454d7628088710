"""Merge speed and memory: l2smerge vs the I/O floor vs mergekit, on Qwen2.5-0.5B shapes.

Builds (once, under --workdir, never in the repository) a synthetic trio with the tensor
shapes of Qwen2.5-0.5B (24 layers, hidden 896, intermediate 4864, 14 heads, 2 KV heads,
head_dim 64, vocab 151936, tied embeddings): a random bf16 base and two "fine-tuned" children
(base + small noise), each saved as sharded safetensors. Then, page cache warm, times in
fresh processes and measures each one's peak RSS (os.wait4):

  io_floor              read every input tensor (base + one model) once, write one output
  l2smerge TA           task_arithmetic, alpha 0.7, base + one model
  l2smerge TIES         ties, density 0.2 (the study's k = 0.8), alpha 1.0, base + one model
  mergekit TA / TIES    the same merges with mergekit-yaml (when mergekit is installed)

Each job runs --repeat times (5), interleaved, outputs deleted and dirty pages flushed
between jobs; medians are reported. Targets: TA <= 1.2x and TIES <= 1.8x the I/O floor (issue
14), TIES <= 0.5x mergekit's time, peak RSS <= 0.3x mergekit's (issue 2). mergekit is never
a project dependency: `--install-mergekit` puts it in its own venv (default
/tmp/mergekit-venv).

    python benchmarks/merge_speed.py [--install-mergekit] [--workdir /tmp/l2s-merge-bench]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPES = dict(
    layers=24, hidden=896, intermediate=4864, heads=14, kv_heads=2, head_dim=64, vocab=151936
)


def qwen_tensors(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["head_dim"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (s["heads"] * s["head_dim"], h)),
            (p + "self_attn.q_proj.bias", (s["heads"] * s["head_dim"],)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.k_proj.bias", (kv,)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.bias", (kv,)),
            (p + "self_attn.o_proj.weight", (h, s["heads"] * s["head_dim"])),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out.append(("model.norm.weight", (h,)))
    return out


def qwen_config(s: dict) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": s["hidden"],
        "intermediate_size": s["intermediate"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "vocab_size": s["vocab"],
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }


def build_trio(root: Path, shapes: dict) -> dict[str, Path]:
    """base, model1, model2: random bf16, sharded at 400MB like a small Hub model."""
    import torch

    from l2smerge.merge.checkpoint import PlannedTensor, ShardedWriter

    paths = {n: root / n for n in ("base", "model1", "model2")}
    marker = root / "trio.json"
    if marker.exists() and json.loads(marker.read_text()) == shapes:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    tensors = qwen_tensors(shapes)
    plan = [PlannedTensor(n, shape, torch.bfloat16) for n, shape in tensors]
    writers = {}
    for name, path in paths.items():
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(qwen_config(shapes), indent=2))
        writers[name] = ShardedWriter(path, plan, 400_000_000)
    g = torch.Generator().manual_seed(0)
    for name, shape in tensors:
        base = torch.randn(shape, generator=g) * 0.02
        writers["base"].write(name, base.to(torch.bfloat16))
        for child in ("model1", "model2"):
            noisy = base + torch.randn(shape, generator=g) * 0.002
            writers[child].write(name, noisy.to(torch.bfloat16))
            del noisy
        del base
    for w in writers.values():
        w.finish()
    marker.write_text(json.dumps(shapes))
    return paths


def io_floor(base: Path, model: Path, out: Path) -> None:
    """A merge whose arithmetic is free: l2smerge's reader and writer with the executor's
    scheduling (the same row blocks, the next block read in a thread while this one is
    written, the allocator kept warm), reading every tensor of both inputs once and writing
    the base's tensors as the output. What a merge costs beyond this is its arithmetic."""
    from concurrent.futures import ThreadPoolExecutor

    from l2smerge.merge.checkpoint import Checkpoint, PlannedTensor, ShardedWriter
    from l2smerge.merge.executor import _block_rows, _keep_freed_memory

    _keep_freed_memory()
    b, m = Checkpoint(base), Checkpoint(model)
    names = b.names()
    out.mkdir(parents=True)
    writer = ShardedWriter(
        out, [PlannedTensor(n, b.info(n).shape, b.info(n).dtype) for n in names], 5_000_000_000
    )
    pieces = []  # (name, first row, last row + 1), or whole tensors (None, None)
    for name in names:
        shape = b.info(name).shape
        rows = _block_rows(shape)
        if rows is None:
            pieces.append((name, None, None))
        else:
            pieces += [(name, a, min(a + rows, shape[0])) for a in range(0, shape[0], rows)]

    def read(piece: tuple) -> object:
        name, start, stop = piece
        if start is None:
            m.read(name)
            return b.read(name)
        m.read_rows(name, start, stop)
        return b.read_rows(name, start, stop)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, pieces[0])
        for i, (name, _, _) in enumerate(pieces):
            tensor = pending.result()
            if i + 1 < len(pieces):
                pending = pool.submit(read, pieces[i + 1])
            writer.write(name, tensor)
    writer.finish()


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run one command in a fresh process: wall seconds and that process's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return {"seconds": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3)}


def warm(paths: list[Path]) -> None:
    for p in paths:
        for f in sorted(p.glob("*.safetensors")):
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass


def install_mergekit(venv: Path) -> None:
    print(f"installing mergekit into {venv} (not a project dependency)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = str(venv / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "torch==2.13.0"], check=True)  # CPU build first
    subprocess.run([pip, "install", "-q", "mergekit"], check=True)


def mergekit_config(method: str, base: Path, model: Path) -> str:
    params = {"weight": 0.7} if method == "task_arithmetic" else {"weight": 1.0, "density": 0.2}
    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(model), "parameters": params}],
        "dtype": "bfloat16",
    }
    if method == "ties":
        config["parameters"] = {"normalize": False}
    return json.dumps(config)  # JSON is YAML


def compare_outputs(a: Path, b: Path) -> dict:
    """How close two merged checkpoints are: max |diff| and share of differing entries."""

    from l2smerge.merge.checkpoint import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    max_diff, differ, total = 0.0, 0, 0
    for name in ca.names():
        if name not in cb:
            continue
        x, y = ca.read(name).float(), cb.read(name).float()
        d = (x - y).abs()
        max_diff = max(max_diff, float(d.max()))
        differ += int((d > 0).sum())
        total += d.numel()
    return {"max_abs_diff": max_diff, "fraction_differing": round(differ / max(total, 1), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/l2s-merge-bench"))
    ap.add_argument("--mergekit-venv", type=Path, default=Path("/tmp/mergekit-venv"))
    ap.add_argument("--install-mergekit", action="store_true", help="create the mergekit venv")
    ap.add_argument("--no-mergekit", action="store_true", help="skip mergekit even if present")
    ap.add_argument("--layers", type=int, default=SHAPES["layers"], help="fewer for a quick run")
    ap.add_argument("--threads", type=int, default=None, help="OMP/torch threads for every run")
    ap.add_argument(
        "--repeat", type=int, default=5, help="rounds of every job, interleaved; medians reported"
    )
    ap.add_argument("--io-floor", nargs=3, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-trio", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = {**SHAPES, "layers": args.layers}
    if args.io_floor:
        io_floor(*args.io_floor)
        gc.freeze()  # exits as `l2smerge` does, without the last full garbage collection
        return
    if args.build_trio:
        build_trio(args.build_trio, shapes)
        return

    # Built in a child process: this process stays small, because a child's peak RSS as the
    # kernel reports it includes the parent's memory at the time it was spawned.
    trio_dir = args.workdir / "trio"
    subprocess.run(
        [sys.executable, str(HERE), "--build-trio", str(trio_dir), "--layers", str(args.layers)],
        check=True,
    )
    trio = {n: trio_dir / n for n in ("base", "model1", "model2")}
    runs = args.workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    mergekit = args.mergekit_venv / "bin" / "mergekit-yaml"
    if args.install_mergekit and not mergekit.exists():
        install_mergekit(args.mergekit_venv)
    use_mergekit = mergekit.exists() and not args.no_mergekit
    base, model = trio["base"], trio["model1"]
    warm([base, model])
    input_gb = sum(f.stat().st_size for p in (base, model) for f in p.glob("*.safetensors")) / 1e9
    print(f"inputs: base + one model, {input_gb:.2f} GB bf16, page cache warm", flush=True)

    l2s = [
        sys.executable,
        "-m",
        "l2smerge",
        "merge",
        "--base",
        str(base),
        "--model",
        str(model),
        "--no-progress",
    ]
    jobs: dict[str, list[str]] = {
        "io_floor": [
            sys.executable,
            str(HERE),
            "--io-floor",
            str(base),
            str(model),
            str(runs / "floor"),
        ],
        "l2smerge task_arithmetic": l2s
        + ["--method", "task_arithmetic", "--alpha", "0.7", "-o", str(runs / "l2s_ta")],
        "l2smerge ties": l2s
        + ["--method", "ties", "--density", "0.2", "--alpha", "1.0", "-o", str(runs / "l2s_ties")],
    }
    if use_mergekit:
        for method in ("task_arithmetic", "ties"):
            cfg = runs / f"mergekit_{method}.yaml"
            cfg.write_text(mergekit_config(method, base, model))
            jobs[f"mergekit {method}"] = [
                str(mergekit),
                str(cfg),
                str(runs / f"mk_{method}"),
                "--no-copy-tokenizer",
                "--out-shard-size",
                "5B",
            ]
    # Jobs run in rounds (floor, TA, TIES, ..., then again), each output deleted and the page
    # cache's dirty pages flushed (sync) before the next job starts: a write that one job left
    # to the kernel is not billed to the next, and a slow moment of the machine hits every job
    # of a round alike. Medians over the rounds are reported.
    outputs = {"io_floor": runs / "floor"}  # the folder each job writes
    for label, cmd in jobs.items():
        if label.startswith("l2smerge"):
            outputs[label] = Path(cmd[cmd.index("-o") + 1])
        elif label.startswith("mergekit"):
            outputs[label] = Path(cmd[2])
    samples: dict[str, list[dict]] = {label: [] for label in jobs}
    for _ in range(args.repeat):
        for label, cmd in jobs.items():
            shutil.rmtree(outputs[label], ignore_errors=True)
            os.sync()
            samples[label].append(measure(cmd, env))
    shutil.rmtree(outputs["io_floor"], ignore_errors=True)  # the merges' last outputs are compared
    results: dict[str, dict] = {}
    for label, runs_of_job in samples.items():
        seconds = sorted(r["seconds"] for r in runs_of_job)
        results[label] = {
            "seconds": statistics.median(seconds),
            "seconds_min": seconds[0],
            "seconds_each": [r["seconds"] for r in runs_of_job],
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs_of_job),
        }
        print(
            f"  {label:26s} {results[label]['seconds']:7.2f} s  "
            f"{results[label]['peak_rss_gb']:6.2f} GB peak RSS  (min {seconds[0]:.2f} s; each: "
            f"{', '.join(f'{t:.2f}' for t in results[label]['seconds_each'])} s)",
            flush=True,
        )

    floor = results["io_floor"]["seconds"]
    floor_min = results["io_floor"]["seconds_min"]
    ratios = {
        "l2smerge TA / io_floor time": results["l2smerge task_arithmetic"]["seconds"] / floor,
        "l2smerge TIES / io_floor time": results["l2smerge ties"]["seconds"] / floor,
        # The least-disturbed runs (timeit's advice: noise only ever adds time). On a VM the
        # first touch of fresh memory, page cache included, costs 0.8-3.4 s per GB.
        "l2smerge TA / io_floor, fastest runs": results["l2smerge task_arithmetic"]["seconds_min"]
        / floor_min,
        "l2smerge TIES / io_floor, fastest runs": results["l2smerge ties"]["seconds_min"]
        / floor_min,
    }
    if use_mergekit:
        for m, short in (("task_arithmetic", "TA"), ("ties", "TIES")):
            ours, theirs = results[f"l2smerge {m}"], results[f"mergekit {m}"]
            ratios[f"l2smerge {short} / mergekit time"] = ours["seconds"] / theirs["seconds"]
            ratios[f"l2smerge {short} / mergekit peak RSS"] = (
                ours["peak_rss_gb"] / theirs["peak_rss_gb"]
            )
        results["agreement TA (l2smerge vs mergekit)"] = compare_outputs(
            runs / "l2s_ta", runs / "mk_task_arithmetic"
        )
        results["agreement TIES (l2smerge vs mergekit)"] = compare_outputs(
            runs / "l2s_ties", runs / "mk_ties"
        )
    print("\nratios of medians, each target met or MISSED:")
    targets = {  # issue 14 (the floor) and issue 2 (mergekit)
        "l2smerge TA / io_floor time": 1.2,
        "l2smerge TIES / io_floor time": 1.8,
        "l2smerge TIES / mergekit time": 0.5,
        "l2smerge TA / mergekit peak RSS": 0.3,
        "l2smerge TIES / mergekit peak RSS": 0.3,
    }
    for k, v in ratios.items():
        verdict = ""
        if k in targets:
            verdict = f"  {'met' if v <= targets[k] else 'MISSED'} (<= {targets[k]})"
        print(f"  {k:40s} {v:6.2f}{verdict}")
    for k in [k for k in results if k.startswith("agreement")]:
        print(f"  {k}: {results[k]}")
    record = {
        "shapes": shapes,
        "input_gb": input_gb,
        "cpus": os.cpu_count(),
        "results": results,
        "ratios": ratios,
    }
    (args.workdir / "merge_speed.json").write_text(json.dumps(record, indent=2))
    print(f"\nwritten {args.workdir / 'merge_speed.json'}")
    shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
