"""Loading models for calibration passes: whole, or one part at a time on the meta device."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l2smerge.util.errors import L2SError

# Architectures whose causal LM is exactly embed_tokens -> layers -> norm -> lm_head, with
# nothing between the parts (no embedding scale as in Gemma, no logit scale or soft-capping as
# in Cohere, Granite or Gemma 2): streaming them part by part gives the whole model's numbers.
STREAMABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Float32 bytes of the largest block of rows taken at once from a big tensor (the output
# head, the embedding): a block and its few float32 temporaries stay small beside a layer.
ROW_BLOCK_BYTES = 16 << 20


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


@functools.cache
def _glibc() -> Any | None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both present: glibc
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def freed_memory_returned() -> Iterator[None]:
    """While streaming, serve allocations up to 32 MB from the heap (glibc's
    M_MMAP_THRESHOLD; a fresh mapping per tensor makes the kernel fault in and zero every
    activation, which measured several times slower than the arithmetic), and give the heap's
    free pages back to the system each time a part is dropped (`LayerStream.drop`,
    malloc_trim): the long-lived hidden states kept between parts would otherwise pin the
    freed layers' memory (measured on a 6-layer Qwen2.5-0.5B-shaped model: resident memory
    grew by ~60 MB per layer of the backward sweep instead of shrinking). No-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    try:
        yield
    finally:
        return_freed_memory()


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (malloc_trim); no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


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
    needs (embed_tokens, layers, rotary_emb, norm, an output head without bias); None
    otherwise."""
    prefix = getattr(model, "base_model_prefix", "model")
    decoder = getattr(model, prefix, None)
    needed = ("embed_tokens", "layers", "rotary_emb", "norm")
    if decoder is None or not all(hasattr(decoder, a) for a in needed):
        return None
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return None
    return prefix, decoder


def full_attention_only(config: Any, longest: int) -> bool:
    """Whether every layer attends to the whole causal prefix for texts up to `longest`
    tokens (the streamed layers get a plain causal mask): no sliding-window layer, or a window
    that no text outgrows."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and all(t == "full_attention" for t in types):
        return True
    if types is None and window is None:
        return True
    return window is not None and longest <= window


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


def row_blocks(shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges covering the rows of a tensor of this shape, each at most
    ROW_BLOCK_BYTES in float32 (one row at least)."""
    rows = shape[0]
    step = max(1, ROW_BLOCK_BYTES // (4 * math.prod(shape[1:])))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def read_row_set(checkpoint: Any, name: str, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` (sorted, unique) of a tensor, in its stored dtype: one positioned read per
    run of consecutive rows."""
    if rows.numel() == 0:
        info = checkpoint.info(name)
        return torch.empty((0, *info.shape[1:]), dtype=info.dtype)
    values = rows.tolist()
    parts, start = [], values[0]
    for previous, row in zip(values, values[1:] + [None], strict=True):
        if row != previous + 1:
            parts.append(checkpoint.read_rows(name, start, previous + 1))
            start = row
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@dataclass
class LayerStream:
    """A decoder-only causal LM built on the meta device (no memory), whose parts get real
    float32 weights from its checkpoint one at a time: the embedding rows a text uses, each
    decoder layer, the final norm, the output head in blocks of rows. Between the parts only
    hidden states travel, so peak memory is one part's weights plus the hidden states."""

    path: Path
    checkpoint: Any  # merge.checkpoint.Checkpoint
    config: Any
    skeleton: torch.nn.Module
    prefix: str
    layers: list[torch.nn.Module]
    norm: torch.nn.Module
    rotary: torch.nn.Module
    embed_name: str  # the embedding's tensor name ("model.embed_tokens.weight")
    head_name: str  # the output head's tensor name ("lm_head.weight")
    tied: bool  # the head is the embedding (head_name then names the embedding's tensor)
    padding_idx: int | None  # the embedding row that gets no gradient
    device: str

    @property
    def vocab_size(self) -> int:
        return self.checkpoint.info(self.head_name).shape[0]

    def layer_prefix(self, index: int) -> str:
        return f"{self.prefix}.layers.{index}"

    def load(self, module: torch.nn.Module, prefix: str) -> None:
        materialise(module, prefix, self.checkpoint, self.device)

    @staticmethod
    def drop(module: torch.nn.Module) -> None:
        module.to("meta")
        return_freed_memory()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embedding of one text, [1, T, hidden] float32, from the rows it uses alone."""
        rows, where = torch.unique(ids, return_inverse=True)
        table = read_row_set(self.checkpoint, self.embed_name, rows)
        return table.to(self.device, torch.float32)[where.to(self.device)][None]

    def run_layer(self, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """One decoder layer on one unpadded text [1, T, hidden] (causal attention)."""
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        out = layer(
            hidden,
            attention_mask=causal_mask(hidden.shape[1], hidden.device),
            position_ids=positions,
            position_embeddings=self.rotary(hidden, positions),
        )
        return out[0] if isinstance(out, tuple) else out

    def head_blocks(self) -> Iterator[tuple[int, int]]:
        return row_blocks(self.checkpoint.info(self.head_name).shape)

    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] of final-norm outputs [T, hidden], the head read block by block."""
        logits = torch.empty(normed.shape[0], self.vocab_size, device=normed.device)
        for start, stop in self.head_blocks():
            weight = self.checkpoint.read_rows(self.head_name, start, stop)
            logits[:, start:stop] = normed @ weight.to(normed.device, torch.float32).T
        return logits


def open_layer_stream(model_path: str | Path, device: str, longest: int) -> LayerStream | None:
    """The model as a LayerStream when its architecture streams exactly (see
    STREAMABLE_MODEL_TYPES, `decoder_parts`, `full_attention_only` for texts of up to
    `longest` tokens); None when it must be loaded whole."""
    from transformers import AutoModelForCausalLM

    from l2smerge.merge.checkpoint import Checkpoint

    model_path = Path(model_path)
    config = load_config(model_path)
    if config.model_type not in STREAMABLE_MODEL_TYPES or not full_attention_only(config, longest):
        return None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parts = decoder_parts(skeleton)
    if parts is None:
        return None
    prefix, decoder = parts
    checkpoint = Checkpoint(model_path)
    embed_name = f"{prefix}.embed_tokens.weight"
    head = skeleton.get_output_embeddings()
    tied = head.weight is decoder.embed_tokens.weight
    head_module = next(name for name, m in skeleton.named_modules() if m is head)
    head_name = embed_name if tied else f"{head_module}.weight"
    for name in (embed_name, head_name):
        if name not in checkpoint:
            raise L2SError(f"{model_path}: tensor {name!r} is missing")
    return LayerStream(
        path=model_path,
        checkpoint=checkpoint,
        config=config,
        skeleton=skeleton,
        prefix=prefix,
        layers=list(decoder.layers)[: config.num_hidden_layers],
        norm=decoder.norm,
        rotary=type(decoder.rotary_emb)(config=config).to(device),
        embed_name=embed_name,
        head_name=head_name,
        tied=tied,
        padding_idx=decoder.embed_tokens.padding_idx,
        device=device,
    )
