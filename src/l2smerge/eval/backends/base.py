"""The one interface every backend implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from l2smerge.eval.prompts import Prompt


@dataclass(frozen=True)
class Request:
    key: tuple[str, int]  # (bench, id): replay looks responses up by it
    prompt: Prompt


@dataclass(frozen=True)
class Generation:
    response: str
    tokens: int | None  # response length under the model's tokenizer; None when unknown
    truncated: bool  # stopped by the token limit, not by end-of-sequence or a stop string


class Backend(Protocol):
    # Renders chat prompts and counts tokens; None where the backend has none (replay
    # without --tokenizer, openai without --tokenizer).
    tokenizer: Any | None

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        """Yield (index into `requests`, generation) as each finishes, in any order."""
        ...

    def close(self) -> None: ...


def load_tokenizer(path: str, what: str = "tokenizer") -> Any:
    """A Hugging Face tokenizer from a local directory or hub name, as a clear error if not."""
    from transformers import AutoTokenizer

    from l2smerge.util.errors import L2SError

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for bad paths
        raise L2SError(f"cannot load the {what} from {path!r}: {exc}".splitlines()[0]) from None


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """A prompt's token ids. A chat template already writes any BOS token, so only raw
    prompts get the tokenizer's special tokens (ids, not text, so no backend adds a second)."""
    return tokenizer.encode(prompt.text, add_special_tokens=prompt.messages is None)


def count_tokens(tokenizer: Any | None, text: str) -> int | None:
    if tokenizer is None:
        return None
    return len(tokenizer.encode(text, add_special_tokens=False))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
