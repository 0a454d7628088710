"""vLLM offline inference: greedy or sampled (eval/sampling.py: each sample of each item a
request with its own seed), `--max-tokens`, tensor parallelism. vLLM is imported only
here, when this backend is chosen (`pip install 'l2smerge[vllm]'`, needs a GPU).

Generation stops as in the toolkit's vLLM call (`SamplingParams(stop=..., stop_token_ids=...)`);
the response is then cut by the same `finish` as the hf backend, from the token ids, so both
backends give the same text and the same count (vLLM's ids include the tokens of a stop
string)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from l2smerge.eval.backends.base import (
    Generation,
    Request,
    encode_prompt,
    eos_ids_of,
    finish,
    stop_token_ids,
)
from l2smerge.eval.sampling import Sampling, sample_seed
from l2smerge.util.errors import L2SError

# Prompts handed to vLLM at once: large enough for its continuous batching to stay busy,
# small enough that an interrupted run loses little (results are written per chunk).
DEFAULT_CHUNK = 512


class VLLMBackend:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: Any | None = None,
        dtype: str | None = None,
        tensor_parallel_size: int = 1,
        batch_size: int | None = None,
        sampling: Sampling | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        **_ignored: Any,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            from l2smerge.eval.backends import VLLM_HINT

            raise L2SError(f"--backend vllm needs vLLM ({exc}); {VLLM_HINT}") from None
        self.sampling = sampling or Sampling()
        tokenizer_path = tokenizer if isinstance(tokenizer, str) else None
        if tokenizer is not None and tokenizer_path is None:
            tokenizer_path = getattr(tokenizer, "name_or_path", None)
        kwargs: dict[str, Any] = {
            "model": model,
            "tokenizer": tokenizer_path or model,
            "dtype": dtype or "auto",
            "tensor_parallel_size": tensor_parallel_size,
            "seed": self.sampling.seed,
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.chunk = batch_size or DEFAULT_CHUNK
        try:
            from transformers import GenerationConfig

            configured = eos_ids_of(GenerationConfig.from_pretrained(model).eos_token_id)
        except OSError:  # no generation_config.json: the tokenizer's eos is all there is
            configured = set()
        self.stop_ids = stop_token_ids(self.tokenizer, configured)
        try:  # the engine's model config (vLLM V0 and V1 alike)
            self.context_length: int | None = self.llm.llm_engine.model_config.max_model_len
        except AttributeError:
            self.context_length = None

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        from vllm import SamplingParams

        for start in range(0, len(requests), self.chunk):
            indices = range(start, min(start + self.chunk, len(requests)))
            encoded = {i: encode_prompt(self.tokenizer, requests[i].prompt) for i in indices}
            limits = {i: self._limit(max_tokens, len(encoded[i]), requests[i]) for i in indices}
            params = [
                SamplingParams(
                    temperature=self.sampling.temperature,
                    top_p=self.sampling.top_p,
                    max_tokens=limits[i],
                    stop=list(requests[i].prompt.stop) or None,
                    stop_token_ids=list(self.stop_ids),
                    # stop strings are looked for in text with special tokens, as in `finish`
                    skip_special_tokens=False,
                    seed=sample_seed(self.sampling.seed, requests[i].key, requests[i].sample),
                )
                for i in indices
            ]
            prompts = [{"prompt_token_ids": encoded[i]} for i in indices]
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            for i, output in zip(indices, outputs, strict=True):
                yield (
                    i,
                    finish(
                        self.tokenizer,
                        output.outputs[0].token_ids,
                        stop_ids=self.stop_ids,
                        stop=requests[i].prompt.stop,
                        limit=limits[i],
                    ),
                )

    def _limit(self, max_tokens: int, prompt_tokens: int, request: Request) -> int:
        room = (self.context_length or max_tokens + prompt_tokens) - prompt_tokens
        if room < 1:
            bench, item = request.key
            raise L2SError(
                f"{bench} id {item}: the prompt has {prompt_tokens} tokens, the model's context "
                f"only {self.context_length}"
            )
        return min(max_tokens, room)

    def close(self) -> None:
        self.llm = None
