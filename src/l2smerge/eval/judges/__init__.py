"""Coverage judges: which key points of a free-form task a response covers.

`lexical` (deterministic, free) and `llm` (an OpenAI-compatible chat endpoint); see
docs/tasks.md. `make_judge` imports only the one chosen."""

from __future__ import annotations

from typing import Any

from l2smerge.eval.judges.base import (
    COVERED,
    MISSED,
    UNSUPPORTED,
    Judge,
    Judgement,
    JudgeRequest,
    PointVerdict,
)
from l2smerge.util.errors import L2SError

JUDGES = ("lexical", "llm")

__all__ = [
    "COVERED",
    "JUDGES",
    "MISSED",
    "UNSUPPORTED",
    "Judge",
    "JudgeRequest",
    "Judgement",
    "PointVerdict",
    "make_judge",
]


def make_judge(name: str, **options: Any) -> Judge:
    """The judge called `name`; `options` are the llm judge's (url, model, api_key_env, ...)."""
    if name == "lexical":
        from l2smerge.eval.judges.lexical import LexicalJudge

        return LexicalJudge()
    if name == "llm":
        from l2smerge.eval.judges.llm import LLMJudge

        return LLMJudge(**options)
    raise L2SError(f"unknown judge {name!r}; choose one of {', '.join(JUDGES)}")
