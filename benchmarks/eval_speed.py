"""Speed of the `hf` eval backend against a plain batched `model.generate` loop.

Same tiny random model (made here), same prompts (the study's `qwen25-math-cot` prompt on
GSM8K questions), same batch size and token limit, greedy, in one run. Prints
tokens/s for both and their ratio (target: the backend >= 80% of the plain loop), then
`evaluate()` end to end (generation + grading + writing results) for reference.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py [--prompts 16] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tiny import make_tiny_model  # noqa: E402

from l2smerge.eval import evaluate  # noqa: E402
from l2smerge.eval.backends import Request  # noqa: E402
from l2smerge.eval.backends.hf import HFBackend  # noqa: E402
from l2smerge.eval.benchmarks import load_items  # noqa: E402
from l2smerge.eval.prompts import PromptBuilder  # noqa: E402


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
        generated += int((new != tokenizer.pad_token_id).sum())
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "benchmarks"))
    args = parser.parse_args()

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
        f"prompts={args.prompts} batch={args.batch_size} max_tokens={args.max_tokens} "
        f"threads={torch.get_num_threads()}"
    )
    print(
        f"plain model.generate loop : {plain_tokens} tokens in {plain_s:.2f}s = "
        f"{plain_rate:.1f} tok/s"
    )
    print(
        f"hf backend                : {ours_tokens} tokens in {ours_s:.2f}s = {ours_rate:.1f} tok/s"
    )
    print(f"ratio hf/plain            : {ours_rate / plain_rate:.1%} (target >= 80%)")
    print(
        f"evaluate() end to end     : {full_tokens:.0f} tokens in {full_s:.2f}s = "
        f"{full_tokens / full_s:.1f} tok/s (includes model load, grading, writing)"
    )


if __name__ == "__main__":
    main()
