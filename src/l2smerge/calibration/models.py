"""Loading models for calibration passes: whole, or one part at a time on the meta device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from l2smerge.util.errors import L2SError


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    console = Console(stderr=True)
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def refuse_custom_code(model_path: Path) -> None:
    """Calibration runs the model through transformers' own implementation of its
    architecture, never code shipped with the model (`auto_map`, trust_remote_code)."""
    from l2smerge.util.jsonl import read_json

    config_path = Path(model_path) / "config.json"
    config = read_json(config_path, "model config") if config_path.is_file() else {}
    if isinstance(config, dict) and config.get("auto_map"):
        raise L2SError(
            f"{config_path}: the model needs its own code (auto_map), which l2smerge never "
            "runs; calibration (AIM, Sens) needs an architecture transformers implements"
        )


def load_config(model_path: Path) -> Any:
    """The model's transformers config (no custom code), or a one-line error."""
    from transformers import AutoConfig

    refuse_custom_code(model_path)
    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    except Exception as exc:  # OSError, ValueError, KeyError (unknown model_type) ...
        raise L2SError(f"{model_path}: cannot read its config ({exc})") from None


def load_full_model(model_path: Path, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    refuse_custom_code(model_path)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=False
        )
    except Exception as exc:
        raise L2SError(f"{model_path}: cannot load the model ({exc})") from exc
    return model.to(device).eval()


def decoder_parts(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """(prefix, decoder) when the model has the usual decoder-only layout that streaming
    needs (embed_tokens, layers, rotary_emb); None otherwise."""
    prefix = getattr(model, "base_model_prefix", "model")
    decoder = getattr(model, prefix, None)
    needed = ("embed_tokens", "layers", "rotary_emb")
    if decoder is None or not all(hasattr(decoder, a) for a in needed):
        return None
    return prefix, decoder


def materialise(module: torch.nn.Module, prefix: str, checkpoint: Any, device: str) -> None:
    """Give a meta-device module its real weights, read tensor by tensor from the checkpoint."""
    state = {}
    for name, _ in list(module.named_parameters()) + list(module.named_buffers()):
        full = f"{prefix}.{name}"
        if full in checkpoint:
            state[name] = checkpoint.read(full).to(device, torch.float32)
    missing = [n for n, _ in module.named_parameters() if n not in state]
    if missing:
        raise L2SError(f"{checkpoint.path}: tensor {prefix}.{missing[0]!r} is missing")
    module.load_state_dict(state, strict=False, assign=True)


def causal_mask(length: int, device: str) -> torch.Tensor:
    mask = torch.full((length, length), torch.finfo(torch.float32).min, device=device)
    return torch.triu(mask, diagonal=1)[None, None]
