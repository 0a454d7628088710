"""Speed of the `hf` eval backend against a plain batched `model.generate` loop (static
batches: each runs until its longest response ends).

Same prompts (the study's `qwen25-math-cot` prompt on GSM8K questions), same batch size and
token limit, greedy, in one run, on two workloads:
- uniform: a tiny random model (made here) that never says eos, so every response runs to
  the token limit. Target: the backend >= 0.9x the plain loop (issue 14; 80% before the
  refilled batch). Then `evaluate()` end to end (generation + grading + writing) for reference.
- skewed: a tiny model made to answer in planned lengths (tests/tiny.py
  make_planned_length_model): one response in each batch --long tokens, the others
  --long / --skew, as a reasoning model's lengths differ. Target: the backend >= 1.5x.
Both see the prompts in the backend's order (longest first), so the plain loop's batches
are the backend's first batch and its refills.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py [--prompts 16] [--max-tokens 48]
                                                      [--workload uniform|skewed|both]
                                                      [--long 150] [--skew 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tiny import make_planned_length_model, make_tiny_model  # noqa: E402

from l2smerge.eval import evaluate  # noqa: E402
from l2smerge.eval.backends import Request  # noqa: E402
from l2smerge.eval.backends.base import encode_prompt  # noqa: E402
from l2smerge.eval.backends.hf import HFBackend  # noqa: E402
from l2smerge.eval.benchmarks import load_items  # noqa: E402
from l2smerge.eval.prompts import Prompt, PromptBuilder  # noqa: E402


def plain_loop(model, tokenizer, texts: list[str], batch_size: int, max_tokens: int) -> int:
    """The baseline: batches in the given order, left padding, model.generate, greedy."""
    tokenizer.padding_side = "left"
    generated = 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        # response tokens: those before the first eos (finished rows are padded after it)
        ended = (new == tokenizer.eos_token_id).int().cumsum(dim=1) > 0
        generated += int((~ended & (new != tokenizer.pad_token_id)).sum())
    return generated


def timed(run) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - start


def skewed(args: argparse.Namespace, tmp: str) -> None:
    short = max(1, args.long // args.skew)
    path = make_planned_length_model(Path(tmp) / "planned", {"L": args.long, "S": short})
    backend = HFBackend(str(path), device="cpu", batch_size=args.batch_size)
    build = PromptBuilder("qwen25-math-cot", backend.tokenizer)
    items = load_items("gsm8k", args.data_dir, limit=args.prompts)
    prompts = [build(it.question) for it in items]
    prompts.sort(key=lambda p: -len(encode_prompt(backend.tokenizer, p)))
    # the backend's order (longest prompt first); one long response per batch of the plain loop
    marked = [
        Prompt(p.text + ("L" if k % args.batch_size == 0 else "S"), p.messages, p.stop)
        for k, p in enumerate(prompts)
    ]
    requests = [Request(("gsm8k", k), p) for k, p in enumerate(marked)]
    texts = [p.text for p in marked]
    model, tokenizer = backend.model, backend.tokenizer
    limit = args.long + 8

    plain_loop(model, tokenizer, texts[:2], 2, 4)  # warm-up, both paths
    list(backend.generate(requests[:2], 4))
    plain_tokens, plain_s = timed(
        lambda: plain_loop(model, tokenizer, texts, args.batch_size, limit)
    )
    ours_tokens, ours_s = timed(lambda: sum(g.tokens for _, g in backend.generate(requests, limit)))
    longs = sum(1 for t in texts if t.endswith("L"))
    print(
        f"\nskewed: prompts={args.prompts} batch={args.batch_size} responses {args.long} tokens "
        f"({longs}) and {short} tokens ({len(texts) - longs}), limit {limit}, "
        f"hf batching: {backend.batching}"
    )
    print(f"plain model.generate loop : {plain_tokens} tokens in {plain_s:.2f}s")
    print(f"hf backend                : {ours_tokens} tokens in {ours_s:.2f}s")
    if plain_tokens != ours_tokens:
        print("WARNING: the two paths generated different numbers of response tokens")
    print(f"speed-up hf/plain         : {plain_s / ours_s:.2f}x (target >= 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workload", choices=("uniform", "skewed", "both"), default="both")
    parser.add_argument("--long", type=int, default=150, help="skewed: the long responses")
    parser.add_argument("--skew", type=int, default=10, help="skewed: long / short length")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("L2SMERGE_DATA_DIR", str(REPO.parent / "shared" / "benchmarks")),
    )
    args = parser.parse_args()
    if args.workload in ("uniform", "both"):
        uniform(args)
    if args.workload in ("skewed", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            skewed(args, tmp)


def uniform(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(Path(tmp) / "model", hidden=256, layers=4, seed=0, context=4096)
        items = load_items("gsm8k", args.data_dir, limit=args.prompts)
        backend = HFBackend(str(path), device="cpu", batch_size=args.batch_size)
        build = PromptBuilder("qwen25-math-cot", backend.tokenizer)
        requests = [Request(it.key, build(it.question)) for it in items]
        texts = [r.prompt.text for r in requests]
        model, tokenizer = backend.model, backend.tokenizer

        plain_loop(model, tokenizer, texts[:2], 2, 4)  # warm-up, both paths
        list(backend.generate(requests[:2], 4))

        t0 = time.perf_counter()
        plain_tokens = plain_loop(model, tokenizer, texts, args.batch_size, args.max_tokens)
        plain_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ours_tokens = sum(g.tokens for _, g in backend.generate(requests, args.max_tokens))
        ours_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        summary = evaluate(
            path,
            "gsm8k",
            out_dir=Path(tmp) / "run",
            data_dir=args.data_dir,
            limit=args.prompts,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            device="cpu",
            progress=False,
        )
        full_s = time.perf_counter() - t0
        full_tokens = summary["benchmarks"]["gsm8k"]["mean_tokens"] * args.prompts

    plain_rate, ours_rate = plain_tokens / plain_s, ours_tokens / ours_s
    print(
        f"uniform: prompts={args.prompts} batch={args.batch_size} max_tokens={args.max_tokens} "
        f"threads={torch.get_num_threads()} hf batching: {backend.batching}"
    )
    print(
        f"plain model.generate loop : {plain_tokens} tokens in {plain_s:.2f}s = "
        f"{plain_rate:.1f} tok/s"
    )
    print(
        f"hf backend                : {ours_tokens} tokens in {ours_s:.2f}s = {ours_rate:.1f} tok/s"
    )
    print(f"ratio hf/plain            : {ours_rate / plain_rate:.2f}x (target >= 0.9x)")
    print(
        f"evaluate() end to end     : {full_tokens:.0f} tokens in {full_s:.2f}s = "
        f"{full_tokens / full_s:.1f} tok/s (includes model load, grading, writing)"
    )


if __name__ == "__main__":
    main()
