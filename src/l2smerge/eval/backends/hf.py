"""transformers: batched greedy generation with left padding and the KV cache, on CPU or GPU.
Prompts are sorted by length so a batch pads little; the longest go first so an
out-of-memory error shows up at once, not hours in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from l2smerge.eval.backends.base import (
    Generation,
    Request,
    cut_at_stop,
    encode_prompt,
    load_tokenizer,
)
from l2smerge.util.errors import L2SError

CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32


class HFBackend:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        **_ignored: Any,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(tokenizer or model)
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
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
        except Exception as exc:  # OSError, ValueError, ... for a bad path or config
            raise L2SError(f"cannot load model {model!r}: {exc}".splitlines()[0]) from None
        self.model.to(self.device).eval()
        self.batch_size = batch_size or (
            GPU_BATCH_SIZE if self.device.startswith("cuda") else CPU_BATCH_SIZE
        )
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if not ids:
            raise L2SError("the model and tokenizer define no end-of-sequence token")
        return ids

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        import torch
        from transformers import GenerationConfig

        encoded = [encode_prompt(self.tokenizer, r.prompt) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(encoded[i]))
        stops = sorted({s for r in requests for s in r.prompt.stop})
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            stop_strings=stops or None,
        )
        extra = {"tokenizer": self.tokenizer} if stops else {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            padded = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
            ).to(self.device)
            try:
                with torch.inference_mode():
                    out = self.model.generate(**padded, generation_config=config, **extra)
            except torch.OutOfMemoryError:
                raise L2SError(
                    f"out of memory generating a batch of {len(batch)} prompts of up to "
                    f"{len(encoded[batch[0]])} tokens with --max-tokens {max_tokens}; lower "
                    "--batch-size and rerun (results so far are kept)"
                ) from None
            new_tokens = out[:, padded["input_ids"].shape[1] :].tolist()
            for i, ids in zip(batch, new_tokens, strict=True):
                yield i, self._finish(ids, requests[i].prompt.stop, max_tokens)

    def _finish(self, ids: list[int], stop: Sequence[str], max_tokens: int) -> Generation:
        end = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        if end is not None:
            ids, truncated = ids[:end], False
        else:
            while ids and ids[-1] == self.pad_id:  # finished early on a stop string
                ids = ids[:-1]
            truncated = len(ids) >= max_tokens
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stop)
        return Generation(text, len(ids), truncated and not stopped)

    def close(self) -> None:
        self.model = None
