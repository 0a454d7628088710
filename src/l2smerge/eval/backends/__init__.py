"""Backends turn prompts into responses, nothing more. `make_backend` imports the chosen one
only, so vLLM (and torch, for `replay`/`openai`) is never imported when not used."""

from __future__ import annotations

from typing import Any

from l2smerge.eval.backends.base import Backend, Generation, Request
from l2smerge.util.errors import L2SError

BACKENDS = ("hf", "vllm", "openai", "replay")

__all__ = ["BACKENDS", "Backend", "Generation", "Request", "check_available", "make_backend"]

VLLM_HINT = "install it with pip install 'l2smerge[vllm]' on a machine with a supported GPU"


def check_available(name: str) -> None:
    """Fail at once, before any model or tokenizer loads, when a backend's library is missing."""
    if name not in BACKENDS:
        raise L2SError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise L2SError(f"--backend vllm needs vLLM (not installed); {VLLM_HINT}")


def make_backend(name: str, model: str, **options: Any) -> Backend:
    if name == "hf":
        from l2smerge.eval.backends.hf import HFBackend

        return HFBackend(model, **options)
    if name == "vllm":
        from l2smerge.eval.backends.vllm import VLLMBackend

        return VLLMBackend(model, **options)
    if name == "openai":
        from l2smerge.eval.backends.openai import OpenAIBackend

        return OpenAIBackend(model, **options)
    if name == "replay":
        from l2smerge.eval.backends.replay import ReplayBackend

        return ReplayBackend(model, **options)
    raise L2SError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
