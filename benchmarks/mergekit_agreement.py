"""Agreement with mergekit: the same mergekit recipes merged by mergekit and by l2smerge.

Builds (under --workdir, never in the repository) a small random Qwen2-shaped base and three
"fine-tuned" children (base + noise), stored in float32 and again in bfloat16 (bf16 task
vectors tie at the TIES threshold by the thousand, which exercises mergekit's tie-breaking).
The embedding and LM head (vocab 65536 × hidden 128, 33.6 MB in float32) are above the
executor's 1 MB block size and TIES's 32 MB whole-buffer limit, so TIES runs in row blocks
there with its thresholds from a sampled window (methods/sparsify.py). Then every recipe below is
merged with `mergekit-yaml` and with `l2smerge merge RECIPE.yml`, both computing in float32
(`dtype: float32`) and writing float32 (`out_dtype: float32`, or --out-dtype), and compared
tensor by tensor:

  deterministic methods (linear, task_arithmetic, ties): max |diff| per tensor, worst tensor;
  DARE (random masks): statistics of the merged task vector Δ = merged − base: the fraction
      of entries changed by each tool, and the ratio l2smerge / mergekit of ‖Δ‖₁ and ‖Δ‖₂
      over the whole model (and the range of the per-tensor L1 ratio).

mergekit is never a project dependency: `--install-mergekit` creates its own venv (default
/tmp/mergekit-venv) that reuses this interpreter's torch through a .pth file (no second torch
download) and pip-installs mergekit==0.1.5 there.

    python benchmarks/mergekit_agreement.py [--install-mergekit] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPES = dict(layers=4, hidden=128, intermediate=256, heads=4, kv_heads=2, head_dim=32, vocab=65536)
MERGEKIT_VERSION = "0.1.5"


def recipes(m: dict[str, str], out_dtype: str = "float32") -> dict[str, dict]:
    """mergekit's example styles (README, examples/*.yml) on our small models."""
    base, a, b, c = m["base"], m["a"], m["b"], m["c"]
    out = {"dtype": "float32", "out_dtype": out_dtype}
    return {
        "linear (examples/linear.yml)": {
            "merge_method": "linear",
            "models": [
                {"model": a, "parameters": {"weight": 1.0}},
                {"model": b, "parameters": {"weight": 0.3}},
                {"model": c, "parameters": {"weight": 0.5}},
            ],
            **out,
        },
        "linear, no normalize, weight gradient": {
            "merge_method": "linear",
            "models": [
                {"model": a, "parameters": {"weight": [0.2, 0.9]}},
                {"model": b, "parameters": {"weight": 0.4}},
            ],
            "parameters": {"normalize": False},
            **out,
        },
        "task_arithmetic, lambda": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.7}},
                {"model": b, "parameters": {"weight": 0.3}},
            ],
            "parameters": {"lambda": 0.8},
            **out,
        },
        "task_arithmetic, normalize, filters": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": [1.0, 0.2, 0.6]}},
                {
                    "model": b,
                    "parameters": {
                        "weight": [
                            {"filter": "self_attn", "value": [0.1, 0.9]},
                            {"filter": "mlp", "value": 0.5},
                            {"value": 0.3},
                        ]
                    },
                },
            ],
            "parameters": {"normalize": True},
            **out,
        },
        "ties (examples/ties.yml)": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
                {"model": b, "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
                {
                    "model": c,
                    "parameters": {
                        "density": 0.33,
                        "weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}],
                    },
                },
            ],
            "parameters": {"normalize": True, "int8_mask": True},
            **out,
        },
        "ties, no normalize (examples/bio-merge.yml)": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"density": 0.5, "weight": 0.5}},
                {"model": b, "parameters": {"density": 0.5, "weight": 0.5}},
            ],
            "parameters": {"normalize": False, "int8_mask": True},
            **out,
        },
        "ties, rescale, lambda": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"density": 0.2, "weight": 0.6}},
                {"model": b, "parameters": {"density": 0.4, "weight": 0.4}},
                {"model": c, "parameters": {"density": 0.3, "weight": 0.8}},
            ],
            "parameters": {"rescale": True, "lambda": 1.2},
            **out,
        },
        "ties, one model (the study's k = 0.8)": {
            "merge_method": "ties",
            "base_model": base,
            "models": [{"model": a, "parameters": {"density": 0.2, "weight": 1.0}}],
            **out,
        },
        "dare_ties": {
            "merge_method": "dare_ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"density": 0.7, "weight": 0.5}},
                {"model": b, "parameters": {"density": 0.7, "weight": 0.5}},
            ],
            **out,
        },
        "dare_linear, one model": {
            "merge_method": "dare_linear",
            "base_model": base,
            "models": [{"model": a, "parameters": {"density": 0.6, "weight": 0.9}}],
            **out,
        },
        "dare_linear, normalize, no rescale": {
            "merge_method": "dare_linear",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"density": 0.6, "weight": 0.6}},
                {"model": b, "parameters": {"density": 0.8, "weight": 0.4}},
            ],
            "parameters": {"normalize": True, "rescale": False},
            **out,
        },
    }


def build_models(root: Path, dtype_name: str, shapes: dict) -> dict[str, str]:
    """base, a, b, c: random Qwen2-shaped checkpoints (untied LM head) in `dtype_name`."""
    import torch

    sys.path.insert(0, str(HERE.parent))
    from merge_speed import qwen_config, qwen_tensors

    from l2smerge.merge.checkpoint import PlannedTensor, ShardedWriter

    dtype = getattr(torch, dtype_name)
    paths = {n: root / n for n in ("base", "a", "b", "c")}
    marker = root / "models.json"
    if marker.exists() and json.loads(marker.read_text()) == shapes:
        return {n: str(p) for n, p in paths.items()}
    shutil.rmtree(root, ignore_errors=True)
    tensors = qwen_tensors(shapes) + [("lm_head.weight", (shapes["vocab"], shapes["hidden"]))]
    config = {**qwen_config(shapes), "tie_word_embeddings": False, "torch_dtype": dtype_name}
    plan = [PlannedTensor(n, shape, dtype) for n, shape in tensors]
    writers = {}
    for name, path in paths.items():
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        writers[name] = ShardedWriter(path, plan, 5_000_000_000)
    g = torch.Generator().manual_seed(0)
    for name, shape in tensors:
        base = torch.randn(shape, generator=g) * 0.02
        if name.endswith("norm.weight"):
            base += 1.0
        writers["base"].write(name, base.to(dtype))
        for child in ("a", "b", "c"):
            writers[child].write(name, (base + torch.randn(shape, generator=g) * 0.002).to(dtype))
    for w in writers.values():
        w.finish()
    marker.write_text(json.dumps(shapes))
    return {n: str(p) for n, p in paths.items()}


def install_mergekit(venv: Path) -> None:
    import torch

    print(f"installing mergekit {MERGEKIT_VERSION} into {venv} (not a project dependency)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    torch_site = Path(torch.__file__).resolve().parent.parent
    (site / "zz_reuse_torch.pth").write_text(f"{torch_site}\n")  # after the venv's own packages
    pip = str(venv / "bin" / "pip")
    subprocess.run([pip, "install", "-q", f"mergekit=={MERGEKIT_VERSION}"], check=True)


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def compare(ours: Path, theirs: Path, base: Path, random: bool) -> dict:
    from l2smerge.merge.checkpoint import Checkpoint

    a, b, o = Checkpoint(ours), Checkpoint(theirs), Checkpoint(base)
    missing = sorted(set(a.names()) ^ set(b.names()))
    rows = {}
    for name in sorted(set(a.names()) & set(b.names())):
        x, y = a.read(name).float(), b.read(name).float()
        if not random:
            diff = (x - y).abs()
            rows[name] = {
                "max_abs_diff": float(diff.max()),
                "differing": int((diff > 0).sum()),
                "numel": diff.numel(),
            }
            continue
        theta0 = o.read(name).float()
        dx, dy = (x - theta0).flatten(), (y - theta0).flatten()
        rows[name] = {
            "numel": dx.numel(),
            "changed": [int((dx != 0).sum()), int((dy != 0).sum())],
            "l1": [float(dx.abs().sum()), float(dy.abs().sum())],
            "l2_squared": [float(dx.square().sum()), float(dy.square().sum())],
        }
    return {"tensors": rows, "only_in_one": missing}


def summary(result: dict, random: bool) -> str:
    rows = result["tensors"]
    if not random:
        worst = max(rows, key=lambda n: rows[n]["max_abs_diff"])
        exact = sum(r["max_abs_diff"] == 0.0 for r in rows.values())
        differing = sum(r["differing"] for r in rows.values()) / sum(
            r["numel"] for r in rows.values()
        )
        return (
            f"max |diff| {rows[worst]['max_abs_diff']:.3g} ({worst}); "
            f"{exact}/{len(rows)} tensors identical, {differing:.2%} of entries differ"
        )
    numel = sum(r["numel"] for r in rows.values())

    def total(key: str, i: int) -> float:
        return sum(r[key][i] for r in rows.values())

    big = [r for r in rows.values() if r["numel"] >= 4096]
    l1 = sorted(r["l1"][0] / r["l1"][1] for r in big)
    return (
        f"entries changed: ours {total('changed', 0) / numel:.4f}, "
        f"mergekit {total('changed', 1) / numel:.4f}; "
        f"task vector norm ours/mergekit: L1 {total('l1', 0) / total('l1', 1):.4f}, "
        f"L2 {(total('l2_squared', 0) / total('l2_squared', 1)) ** 0.5:.4f} "
        f"(per tensor of >= 4096 entries, L1 {l1[0]:.4f}..{l1[-1]:.4f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/l2s-mergekit-agreement"))
    ap.add_argument("--mergekit-venv", type=Path, default=Path("/tmp/mergekit-venv"))
    ap.add_argument("--install-mergekit", action="store_true", help="create the mergekit venv")
    ap.add_argument("--storage", default="float32,bfloat16", help="input dtypes to try")
    ap.add_argument("--only", default=None, help="run only recipes whose label contains this")
    ap.add_argument("--out-dtype", default="float32", help="the recipes' out_dtype")
    args = ap.parse_args()

    mergekit = args.mergekit_venv / "bin" / "mergekit-yaml"
    if args.install_mergekit and not mergekit.exists():
        install_mergekit(args.mergekit_venv)
    if not mergekit.exists():
        raise SystemExit(f"{mergekit}: not found; pass --install-mergekit")
    version = subprocess.run(
        [str(args.mergekit_venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('mergekit'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mk_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    print(f"mergekit {version} ({args.mergekit_venv}); l2smerge from {sys.executable}")
    record: dict = {"mergekit": version, "shapes": SHAPES, "results": {}}
    for storage in args.storage.split(","):
        models = build_models(args.workdir / f"models-{storage}", storage, SHAPES)
        print(f"\ninputs stored in {storage}, computed in float32, written in {args.out_dtype}:")
        for label, recipe in recipes(models, args.out_dtype).items():
            if args.only and args.only not in label:
                continue
            work = args.workdir / "runs"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            cfg = work / "recipe.yml"
            cfg.write_text(json.dumps(recipe, indent=1))  # JSON is YAML
            t_mk = run([str(mergekit), str(cfg), str(work / "mk"), "--no-copy-tokenizer"], mk_env)
            t_l2s = run(
                [sys.executable, "-m", "l2smerge", "merge", str(cfg), "-o", str(work / "l2s"),
                 "--no-progress"],
                env,
            )  # fmt: skip
            random = recipe["merge_method"].startswith("dare")
            result = compare(work / "l2s", work / "mk", Path(models["base"]), random)
            result["seconds"] = {"mergekit": round(t_mk, 2), "l2smerge": round(t_l2s, 2)}
            record["results"][f"{storage} -> {args.out_dtype}: {label}"] = result
            print(f"  {label:44s} {summary(result, random)}", flush=True)
            if result["only_in_one"]:
                print(f"    tensors in only one output: {result['only_in_one']}")
    (args.workdir / "mergekit_agreement.json").write_text(json.dumps(record, indent=1))
    print(f"\nwritten {args.workdir / 'mergekit_agreement.json'}")


if __name__ == "__main__":
    main()
