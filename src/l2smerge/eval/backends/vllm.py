"""vLLM offline inference: greedy, `--max-tokens`, tensor parallelism. vLLM is imported only
here, when this backend is chosen (`pip install 'l2smerge[vllm]'`, needs a GPU)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from l2smerge.eval.backends.base import Generation, Request, cut_at_stop, encode_prompt
from l2smerge.util.errors import L2SError

# Prompts handed to vLLM at once: large enough for its continuous batching to stay busy,
# small enough that an interrupted run loses little (results are written per chunk).
DEFAULT_CHUNK = 512


class VLLMBackend:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        dtype: str | None = None,
        tensor_parallel_size: int = 1,
        batch_size: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        **_ignored: Any,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise L2SError(
                f"--backend vllm needs vLLM ({exc}); install it with pip install "
                "'l2smerge[vllm]' on a machine with a supported GPU"
            ) from None
        kwargs: dict[str, Any] = {
            "model": model,
            "tokenizer": tokenizer or model,
            "dtype": dtype or "auto",
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.chunk = batch_size or DEFAULT_CHUNK
        self.eos_ids = {self.tokenizer.eos_token_id} - {None}
        try:
            from transformers import GenerationConfig

            configured = GenerationConfig.from_pretrained(model).eos_token_id
            self.eos_ids |= {configured} if isinstance(configured, int) else set(configured or ())
        except OSError:  # no generation_config.json: the tokenizer's eos is all there is
            pass

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        from vllm import SamplingParams

        for start in range(0, len(requests), self.chunk):
            indices = range(start, min(start + self.chunk, len(requests)))
            params = [
                SamplingParams(
                    temperature=0.0,
                    max_tokens=max_tokens,
                    stop=list(requests[i].prompt.stop) or None,
                    seed=0,
                )
                for i in indices
            ]
            prompts = [
                {"prompt_token_ids": encode_prompt(self.tokenizer, requests[i].prompt)}
                for i in indices
            ]
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            for i, output in zip(indices, outputs, strict=True):
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                if ids and ids[-1] in self.eos_ids:
                    ids = ids[:-1]  # counted like the hf backend: tokens before eos
                text, _ = cut_at_stop(completion.text, requests[i].prompt.stop)
                yield i, Generation(text, len(ids), completion.finish_reason == "length")

    def close(self) -> None:
        self.llm = None
