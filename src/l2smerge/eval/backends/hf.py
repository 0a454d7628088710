"""transformers: batched generation with left padding and the KV cache, on CPU or GPU.
Prompts are sorted by length so a batch pads little; the longest go first so an
out-of-memory error shows up at once, not hours in. Greedy runs, where the model's cache
allows it, let a finished response leave the batch at once and a waiting prompt take its
row (hf_refill.py, `batching = "refill"`); elsewhere (sampled runs: their seeds are drawn per
static batch) static batches run `model.generate` until their longest response ends
(`batching = "static"`). run.json records which."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from l2smerge.eval.backends.base import (
    Generation,
    Request,
    encode_prompt,
    eos_ids_of,
    finish,
    load_tokenizer,
    stop_token_ids,
)
from l2smerge.eval.backends.hf_refill import Job, ends_at, generate_refilled, supports_refill
from l2smerge.eval.sampling import Sampling, seeded
from l2smerge.util.errors import L2SError

CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32


class HFBackend:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: Any | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        sampling: Sampling | None = None,
        **_ignored: Any,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.sampling = sampling or Sampling()
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or model)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # Llama-style tokenizers have none; pad with eos
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if dtype is None:
            # bf16 matmuls are slow on most CPUs; on GPU keep the checkpoint's own dtype.
            dtype = "auto" if self.device.startswith("cuda") else "float32"
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype, None)
        if torch_dtype is None:
            raise L2SError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        try:
            self.model, info = AutoModelForCausalLM.from_pretrained(
                model, dtype=torch_dtype, output_loading_info=True, trust_remote_code=False
            )
        except Exception as exc:  # OSError, ValueError, ... for a bad path or config
            raise L2SError(f"cannot load model {model!r}: {exc}".splitlines()[0]) from None
        self.missing_weights: list[str] = sorted(info.get("missing_keys") or ())
        try:
            self.model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:  # no such device, CUDA not compiled in
            raise L2SError(f"--device {self.device}: {exc}".splitlines()[0]) from None
        self.batch_size = batch_size or (
            GPU_BATCH_SIZE if self.device.startswith("cuda") else CPU_BATCH_SIZE
        )
        self.stop_ids = stop_token_ids(
            self.tokenizer, eos_ids_of(self.model.generation_config.eos_token_id)
        )
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.context_length: int | None = getattr(
            self.model.config, "max_position_embeddings", None
        )
        refill = self.sampling.greedy and supports_refill(self.model)
        self.batching = "refill" if refill else "static"

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        import torch
        from transformers import GenerationConfig

        encoded = [encode_prompt(self.tokenizer, r.prompt) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(encoded[i]))
        if self.batching == "refill":
            yield from self._generate_refilled(requests, encoded, order, max_tokens)
            return
        stops = sorted({s for r in requests for s in r.prompt.stop})
        extra = {"tokenizer": self.tokenizer} if stops else {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            limit = self._limit(max_tokens, len(encoded[batch[0]]), requests[batch[0]])
            config = GenerationConfig(
                max_new_tokens=limit,
                **self.sampling.hf_options(),
                eos_token_id=list(self.stop_ids),
                pad_token_id=self.pad_id,
                stop_strings=stops or None,
            )
            padded = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
            ).to(self.device)
            units = [(requests[i].key, requests[i].sample) for i in batch]
            try:
                with torch.inference_mode(), seeded(self.sampling, units, self.device):
                    out = self.model.generate(**padded, generation_config=config, **extra)
            except torch.OutOfMemoryError:
                raise _out_of_memory(len(batch), len(encoded[batch[0]]), max_tokens) from None
            new_tokens = out[:, padded["input_ids"].shape[1] :].tolist()
            for i, ids in zip(batch, new_tokens, strict=True):
                stop = requests[i].prompt.stop
                yield i, finish(self.tokenizer, ids, stop_ids=self.stop_ids, stop=stop, limit=limit)

    def _generate_refilled(
        self,
        requests: Sequence[Request],
        encoded: list[list[int]],
        order: list[int],
        max_tokens: int,
    ) -> Iterator[tuple[int, Generation]]:
        import torch

        jobs = [
            Job(
                i,
                encoded[i],
                self._limit(max_tokens, len(encoded[i]), requests[i]),
                ends_at(self.stop_ids, requests[i].prompt.stop, self.tokenizer),
            )
            for i in order
        ]
        running = generate_refilled(
            self.model, jobs, batch_size=self.batch_size, pad_id=self.pad_id, device=self.device
        )
        try:
            for job in running:
                stop = requests[job.index].prompt.stop
                ids, limit = job.generated, job.limit
                yield (
                    job.index,
                    finish(self.tokenizer, ids, stop_ids=self.stop_ids, stop=stop, limit=limit),
                )
        except torch.OutOfMemoryError:
            raise _out_of_memory(self.batch_size, len(jobs[0].prompt), max_tokens) from None

    def _limit(self, max_tokens: int, prompt_tokens: int, request: Request) -> int:
        """New tokens for a batch whose longest prompt has `prompt_tokens`: `max_tokens`, or
        what the model's context leaves (vLLM stops there too)."""
        if self.context_length is None:
            return max_tokens
        room = self.context_length - prompt_tokens
        if room < 1:
            bench, item = request.key
            raise L2SError(
                f"{bench} id {item}: the prompt has {prompt_tokens} tokens, the model's context "
                f"only {self.context_length}"
            )
        return min(max_tokens, room)

    def close(self) -> None:
        self.model = None


def _out_of_memory(rows: int, prompt_tokens: int, max_tokens: int) -> L2SError:
    return L2SError(
        f"out of memory generating a batch of {rows} prompts of up to {prompt_tokens} tokens "
        f"with --max-tokens {max_tokens}; lower --batch-size and rerun (results so far are kept)"
    )
