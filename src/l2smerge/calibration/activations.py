"""AIM statistics: mean |input activation| per input channel of every Linear of the base,
normalised to an importance in [0, 1], collected one decoder layer at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from l2smerge.calibration.data import (
    DEFAULT_MAX_TOKENS,
    METHOD_FIELDS,
    Sample,
    read_calibration,
    tokenize,
)
from l2smerge.calibration.models import (
    freed_memory_returned,
    load_full_model,
    open_layer_stream,
    progress_bar,
)
from l2smerge.util.cache import (
    cache_key,
    file_sha256,
    load_cached_tensors,
    model_fingerprint,
    save_cached_tensors,
)


class _ChannelMeans:
    """Running mean of |x| per last-dim channel over every token a Linear sees."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).abs().sum(dim=0, dtype=torch.float64)
        if name in self.sums:
            self.sums[name] += flat
        else:
            self.sums[name] = flat
        self.counts[name] = self.counts.get(name, 0) + x.numel() // x.shape[-1]

    def hook(self, name: str) -> Callable:
        return lambda _module, args, _output: self.add(name, args[0])

    def importance(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, total in self.sums.items():
            mean = (total / self.counts[name]).float().cpu()
            out[name] = mean / mean.max().clamp_min(torch.finfo(torch.float32).tiny)
        return out


def _weighted_modules(
    model: torch.nn.Module, prefix: str = ""
) -> list[tuple[str, torch.nn.Module]]:
    """Every module with its own `weight` except embeddings, as AIM's reference code hooks
    them: the Linears, the norms and the output head."""
    found = []
    for name, module in model.named_modules():
        full = f"{prefix}.{name}" if prefix and name else (prefix or name)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and "embed" not in full:
            found.append((full, module))
    return found


def output_head_name(model_path: str | Path) -> str | None:
    """The module name of the output head ("lm_head"), from the config alone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    head = skeleton.get_output_embeddings()
    return next((name for name, m in skeleton.named_modules() if m is head), None)


def activation_importance(
    model_path: str | Path,
    samples: Sequence[Sample],
    *,
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    stream: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-input-channel importance in [0, 1] for every module with a weight but the
    embeddings — each nn.Linear, each norm and the output head, as AIM's reference code
    collects them — keyed by module name (the weight is "<name>.weight"): mean |input| over
    all calibration tokens, divided by its max. (Whether the head and the norms are relaxed
    is the merge's choice: methods/aim.py.)

    stream=True (and an architecture that streams exactly: calibration.models.LayerStream):
    the model is built on the meta device and one part at a time gets real float32 weights —
    the embedding rows the texts use, then each decoder layer in turn — while every sample's
    hidden states are carried from part to part.
    Peak memory: one layer's weights plus the hidden states of all samples (for 7B, 100
    samples of 1,024 tokens: 1.5 GB); the final norm and head are never loaded. Otherwise the
    whole model is loaded with hooks.
    Samples run one at a time without padding, so no attention mask is needed beyond causal.
    """
    model_path = Path(model_path)
    ids = tokenize(model_path, samples, max_tokens)
    stats = _ChannelMeans()
    longest = max(sample.numel() for sample in ids)
    streamed = open_layer_stream(model_path, device, longest) if stream else None
    if streamed is None:
        model = load_full_model(model_path, device, torch.float32)
        for name, module in _weighted_modules(model):
            module.register_forward_hook(stats.hook(name))
        with torch.no_grad(), progress_bar(len(ids), "activations", progress) as step:
            for sample in ids:
                model(input_ids=sample[None].to(device))
                step()
        return stats.importance()

    layers = streamed.layers
    progress_ = progress_bar(len(layers) + 1, "activations", progress)
    with torch.no_grad(), freed_memory_returned(), progress_ as step:
        hidden = [streamed.embed(sample) for sample in ids]
        step()
        for index, layer in enumerate(layers):
            layer_prefix = streamed.layer_prefix(index)
            streamed.load(layer, layer_prefix)
            handles = [
                module.register_forward_hook(stats.hook(name))
                for name, module in _weighted_modules(layer, layer_prefix)
            ]
            for i, h in enumerate(hidden):
                hidden[i] = streamed.run_layer(layer, h)
            for handle in handles:
                handle.remove()
            streamed.drop(layer)
            step()
        norm_name = f"{streamed.prefix}.norm"
        head = streamed.skeleton.get_output_embeddings()
        head_name = next((n for n, m in streamed.skeleton.named_modules() if m is head), None)
        if getattr(streamed.norm, "weight", None) is not None:
            streamed.load(streamed.norm, norm_name)
            for h in hidden:
                stats.add(norm_name, h)
                if head_name is not None:
                    stats.add(head_name, streamed.norm(h))
    return stats.importance()


def aim_importance(
    base: str | Path,
    calibration: str | Path,
    *,
    fields: Sequence[str] = METHOD_FIELDS["aim"],
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """`activation_importance` of the base on the calibration file, through the disk cache."""
    samples = read_calibration(calibration, fields)
    meta = {
        "model": model_fingerprint(base),
        "data": file_sha256(calibration),
        "fields": list(fields),
        "max_tokens": max_tokens,
        "modules": "linear+norms+head",
    }
    key = cache_key("aim", **meta)
    cached = load_cached_tensors(key)
    if cached is not None:
        return cached
    importance = activation_importance(
        base, samples, device=device, max_tokens=max_tokens, progress=progress
    )
    save_cached_tensors(key, importance, meta)
    return importance
