"""The one interface every backend implements, and what the local backends (hf, vllm) share:
prompt encoding, the stop token ids, and cutting a generation at its stops."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from l2smerge.eval.prompts import Prompt
from l2smerge.util.errors import L2SError

# <|im_end|> and <|endoftext|> in every Qwen2/Qwen2.5 vocabulary: the toolkit's stop_token_ids.
QWEN_STOP_IDS = (151645, 151643)


@dataclass(frozen=True)
class Request:
    key: tuple[str, int]  # (bench, id): replay looks responses up by it
    prompt: Prompt
    sample: int = 0  # which sample of the item (sampled runs; eval/sampling.py)


@dataclass(frozen=True)
class Generation:
    response: str
    tokens: int | None  # response length under the model's tokenizer; None when unknown
    truncated: bool  # stopped by the token limit, not by end-of-sequence or a stop string


class Backend(Protocol):
    # Renders chat prompts and counts tokens; None where the backend has none (replay
    # without --tokenizer, openai without --tokenizer).
    tokenizer: Any | None
    # Token ids that end a generation (EOS and the toolkit's); () where the server decides.
    stop_ids: tuple[int, ...]
    # The most tokens (prompt included) the model takes; None where unknown.
    context_length: int | None

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        """Yield (index into `requests`, generation) as each finishes, in any order."""
        ...

    def close(self) -> None: ...


def load_tokenizer(path: str, what: str = "tokenizer") -> Any:
    """A Hugging Face tokenizer from a local directory or hub name, as a clear error if not."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never asks
    except Exception as exc:  # transformers raises OSError, ValueError, ... for bad paths
        raise L2SError(f"cannot load the {what} from {path!r}: {exc}".splitlines()[0]) from None


def is_qwen_tokenizer(tokenizer: Any) -> bool:
    """Qwen2/2.5 vocabulary (Qwen2.5-Math, and merges carrying its tokenizer): its chat
    specials sit at the ids the toolkit stops on. The toolkit decides by "qwen2" in the model
    path; the vocabulary says it whatever the folder is called."""
    ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    return ids == QWEN_STOP_IDS


def stop_token_ids(tokenizer: Any, model_eos: Iterable[int] = ()) -> tuple[int, ...]:
    """The model's EOS ids, the tokenizer's, and for a Qwen tokenizer 151645 and 151643."""
    ids = {int(i) for i in model_eos}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if is_qwen_tokenizer(tokenizer):
        ids.update(QWEN_STOP_IDS)
    if not ids:
        raise L2SError("the model and tokenizer define no end-of-sequence token")
    return tuple(sorted(ids))


def eos_ids_of(configured: int | Sequence[int] | None) -> set[int]:
    """A generation config's `eos_token_id` (an int, a list or None) as a set."""
    if configured is None:
        return set()
    return {configured} if isinstance(configured, int) else set(configured)


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """A prompt's token ids. A chat template already writes any BOS token, so only raw
    prompts get the tokenizer's special tokens (as vLLM encodes a text prompt in the toolkit);
    ids, not text, go to the model, so no backend adds a second BOS."""
    if prompt.text is None:
        raise L2SError("the chat prompt needs a tokenizer with a chat template (--tokenizer)")
    return tokenizer.encode(prompt.text, add_special_tokens=prompt.raw)


def count_tokens(tokenizer: Any | None, text: str) -> int | None:
    if tokenizer is None:
        return None
    return len(tokenizer.encode(text, add_special_tokens=False))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _decode(tokenizer: Any, ids: Sequence[int], *, keep_special: bool) -> str:
    return tokenizer.decode(
        list(ids), skip_special_tokens=not keep_special, clean_up_tokenization_spaces=False
    )


def finish(
    tokenizer: Any,
    ids: Sequence[int],
    *,
    stop_ids: Collection[int],
    stop: Sequence[str],
    limit: int,
) -> Generation:
    """A generation from its new token ids, cut as the toolkit cuts: at the first stop token
    id, else just before the first stop string (looked for in the text with special tokens,
    so `<|im_end|>` is found whatever the vocabulary). The token count is what is left: the
    tokens wholly before the cut. Truncated: `limit` tokens with no stop."""
    ids = list(ids)
    end = next((k for k, t in enumerate(ids) if t in stop_ids), None)
    # a stop string before the stop id (hf pads a sequence that ended on one with pad ids,
    # which may be stop ids) ends the response there
    ids = ids if end is None else ids[:end]
    full = _decode(tokenizer, ids, keep_special=True)
    cut = min((i for i in (full.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut < 0:
        text = _decode(tokenizer, ids, keep_special=False)
        return Generation(text, len(ids), end is None and len(ids) >= limit)
    # The longest prefix of tokens whose text ends at or before the cut (binary search: a
    # prefix's text only grows), then the part of the next token before the stop string.
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_decode(tokenizer, ids[:mid], keep_special=True)) <= cut:
            lo = mid
        else:
            hi = mid - 1
    head = _decode(tokenizer, ids[:lo], keep_special=True)
    while lo and not full.startswith(head):  # a prefix ending inside a multi-byte character
        lo -= 1
        head = _decode(tokenizer, ids[:lo], keep_special=True)
    text = _decode(tokenizer, ids[:lo], keep_special=False) + full[len(head) : cut]
    return Generation(text, lo, False)
