"""Sens-Merging statistics: per-layer sensitivities of each task vector, cross-task logit
alignment between the models, and the coefficients they give."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from l2smerge.calibration.data import (
    DEFAULT_MAX_TOKENS,
    METHOD_FIELDS,
    Sample,
    read_calibration,
    tokenize,
)
from l2smerge.calibration.models import load_full_model, open_layer_stream, progress_bar
from l2smerge.merge.layers import layer_of
from l2smerge.util.cache import (
    cache_key,
    file_sha256,
    load_cached_json,
    model_fingerprint,
    save_cached_json,
)
from l2smerge.util.errors import L2SError


def layer_group(tensor_name: str) -> str:
    """The Sens 'layer' a tensor belongs to: its decoder layer ("model.layers.3"), else its
    own module ("model.embed_tokens", "model.norm", "lm_head")."""
    layer = layer_of(tensor_name)
    if layer is not None:
        return layer[0]
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def task_delta(weight: torch.Tensor, stored_base: torch.Tensor) -> torch.Tensor:
    """δ as the sensitivities weigh it: the model's float32 weight minus the base's, kept in
    the base checkpoint's dtype (a bfloat16 base gives a bfloat16 δ)."""
    return (weight - stored_base.to(weight.device, torch.float32)).to(stored_base.dtype)


def abs_product_sum(delta: torch.Tensor, grad: torch.Tensor) -> float:
    """Σ |δ ⊙ ∇L| over one tensor (or one block of its rows)."""
    return float((delta.float() * grad).abs().sum())


def task_sensitivity(
    model_path: str | Path,
    base_path: str | Path,
    samples: Sequence[Sample],
    *,
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    stream: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """S^l = mean over calibration texts of Σ_{params in layer l} |δ ⊙ ∇L| for one model:
    δ = θ_model − θ_base (`task_delta`), ∇L the float32 gradient of the model's own
    next-token loss on the text (every token predicted), one text at a time.

    stream=True and an architecture that streams exactly (calibration.models.LayerStream):
    one part of the model at a time (calibration.sens_streamed); otherwise the whole model
    in float32 with its gradients, plus δ. Both give the same numbers to float32 round-off."""
    from l2smerge.merge.checkpoint import Checkpoint

    model_path = Path(model_path)
    ids = tokenize(model_path, samples, max_tokens)
    longest = max(sample.numel() for sample in ids)
    streamed = open_layer_stream(model_path, device, longest) if stream else None
    if streamed is not None:
        from l2smerge.calibration.sens_streamed import streamed_task_sensitivity

        return streamed_task_sensitivity(streamed, Checkpoint(base_path), ids, progress=progress)
    return _whole_model_sensitivity(model_path, Checkpoint(base_path), ids, device, progress)


def _whole_model_sensitivity(
    model_path: Path, base: Any, ids: Sequence[torch.Tensor], device: str, progress: bool
) -> dict[str, float]:
    model = load_full_model(model_path, device, torch.float32)
    deltas: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if name not in base:
            raise L2SError(f"{base.path}: tensor {name!r} (in {model_path}) is missing")
        stored = base.read(name)
        if tuple(stored.shape) != tuple(param.shape):
            raise L2SError(
                f"{base.path}: tensor {name!r} has shape {tuple(stored.shape)}, "
                f"{model_path} has {tuple(param.shape)}"
            )
        deltas[name] = (layer_group(name), param, task_delta(param.detach(), stored))
    totals: dict[str, float] = dict.fromkeys((g for g, _, _ in deltas.values()), 0.0)
    if not any(bool(delta.any()) for _, _, delta in deltas.values()):
        return totals  # a zero task vector: every sensitivity is 0, no gradient pass needed
    with progress_bar(len(ids), f"sensitivity {model_path.name}", progress) as step:
        for sample in ids:
            if sample.numel() < 2:
                step()
                continue
            model.zero_grad(set_to_none=True)
            inputs = sample[None].to(device)
            model(input_ids=inputs, labels=inputs).loss.backward()
            for group, param, delta in deltas.values():
                if param.grad is not None:
                    totals[group] += abs_product_sum(delta, param.grad)
            step()
    del model
    return {group: total / len(ids) for group, total in totals.items()}


def _log_probs(model: torch.nn.Module, sample: torch.Tensor, device: str) -> torch.Tensor:
    logits = model(input_ids=sample[None].to(device)).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def summed_kl(expert: torch.Tensor, other: torch.Tensor) -> float:
    """Σ over tokens of KL(p_expert ‖ p_other) from log-probabilities [T, vocab] (over the
    vocabulary the two share)."""
    vocab = min(expert.shape[-1], other.shape[-1])
    p = expert[:, :vocab]
    return float((p.exp() * (p - other[:, :vocab])).sum(dim=-1).sum())


def cross_task_alignment(
    model_paths: Sequence[str | Path],
    samples: Sequence[Sequence[Sample]],
    *,
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    stream: bool = True,
    progress: bool = True,
) -> list[list[float]]:
    """g[k][j] = exp(−mean over task-j tokens of KL(p_j ‖ p_k)): how closely model k
    reproduces expert j's next-token distributions on expert j's calibration texts (1 on the
    diagonal). Streamed like `task_sensitivity` (forward only) when every model streams;
    otherwise all models are loaded together (inference only)."""
    task_ids = [
        tokenize(Path(path), task, max_tokens)
        for path, task in zip(model_paths, samples, strict=True)
    ]
    longest = max(sample.numel() for ids in task_ids for sample in ids)
    streams = [open_layer_stream(p, device, longest) for p in model_paths] if stream else [None]
    if all(s is not None for s in streams):
        from l2smerge.calibration.sens_streamed import streamed_alignment

        return streamed_alignment(streams, task_ids, progress=progress)
    models = [load_full_model(Path(p), device, torch.float32) for p in model_paths]
    k_models = len(models)
    g = [[1.0] * k_models for _ in range(k_models)]
    with torch.no_grad(), progress_bar(k_models, "cross-task alignment", progress) as step:
        for j in range(k_models):
            kl_sums = [0.0] * k_models
            tokens = 0
            for sample in task_ids[j]:
                expert = _log_probs(models[j], sample, device)
                for k in range(k_models):
                    if k != j:
                        kl_sums[k] += summed_kl(expert, _log_probs(models[k], sample, device))
                tokens += sample.numel()
            for k in range(k_models):
                if k != j:
                    g[k][j] = math.exp(-kl_sums[k] / tokens)
            step()
    return g


def active_models(sensitivities: Sequence[dict[str, float]]) -> list[int]:
    """The models Sens weighs: those with a non-zero sensitivity somewhere. A zero task
    vector (a model equal to the base) has none; it would only take a share of the softmax
    and of the cross-task factors, so it is left out of the statistics and gets λ = 0."""
    return [k for k, s in enumerate(sensitivities) if any(v != 0 for v in s.values())]


def _per_model(value, n: int, what: str) -> list:
    if isinstance(value, (str, Path)) or (value and isinstance(value[0], str)):
        return [value] * n
    if len(value) != n:
        raise L2SError(f"sens: {len(value)} {what} for {n} models")
    return list(value)


def sens_statistics(
    base: str | Path,
    models: Sequence[str | Path],
    calibration: str | Path | Sequence[str | Path],
    *,
    fields: Sequence[str] | Sequence[Sequence[str]] = METHOD_FIELDS["sens"],
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> tuple[list[dict[str, float]], list[list[float]] | None]:
    """(per-model layer sensitivities, cross-task alignment matrix among the active models
    (see `active_models`), or None when fewer than two are active), each through the disk
    cache. `calibration` is one file for every model or one per model (model k's task
    data); `fields` likewise one tuple of field names or one per model."""
    files = [Path(f) for f in _per_model(calibration, len(models), "calibration files")]
    chosen = [tuple(f) for f in _per_model(fields, len(models), "field lists")]
    samples = [read_calibration(f, fk) for f, fk in zip(files, chosen, strict=True)]
    data = [file_sha256(f) for f in files]
    model_fps = [model_fingerprint(m) for m in models]
    base_fp = model_fingerprint(base)
    sensitivities = []
    for k, model in enumerate(models):
        meta = {
            "model": model_fps[k],
            "base": base_fp,
            "data": data[k],
            "fields": list(chosen[k]),
            "max_tokens": max_tokens,
        }
        key = cache_key("sens-sensitivity", **meta)
        value = load_cached_json(key)
        if value is None:
            value = task_sensitivity(
                model, base, samples[k], device=device, max_tokens=max_tokens, progress=progress
            )
            save_cached_json(key, value, meta)
        sensitivities.append(value)
    active = active_models(sensitivities)
    if len(active) < 2:
        return sensitivities, None
    meta = {
        "models": [model_fps[k] for k in active],
        "data": [data[k] for k in active],
        "fields": [list(chosen[k]) for k in active],
        "max_tokens": max_tokens,
    }
    key = cache_key("sens-alignment", **meta)
    alignment = load_cached_json(key)
    if alignment is None:
        alignment = cross_task_alignment(
            [models[k] for k in active],
            [samples[k] for k in active],
            device=device,
            max_tokens=max_tokens,
            progress=progress,
        )
        save_cached_json(key, alignment, meta)
    return sensitivities, alignment


def sens_coefficients(
    sensitivities: Sequence[dict[str, float]],
    alignment: Sequence[Sequence[float]] | None,
    *,
    alpha: float,
    temperature: float,
) -> list[dict[str, float]]:
    """Per-model, per-layer TA coefficients λ_k^l from the Sens statistics.

    Only the active models (`active_models`: a non-zero task vector) are weighed; the others
    get λ = 0 (their task vector is zero, so the merge is the same) and `alignment` is over
    the active ones, in order.
    task-specific: a_k^l = S_k^l / ‖S_k‖₂ (each model's layer sensitivities, L2-normalised
    across its layers); cross-task: t_k = Σ_{j≠k} g[k][j], L1-normalised over models (t = 1
    for a single model). Softmax with temperature T over the models at each layer (K ≥ 2):
    λ_k^l = α · K · softmax_k(a_k^l · t_k / T); with one model there is nothing to share
    between models, so the softmax runs over its layers instead: λ^l = α · L ·
    softmax_l(a^l / T). Either way the coefficients average α, and T → ∞ gives task
    arithmetic with α.
    """
    if temperature <= 0:
        raise L2SError(f"sens: temperature must be > 0, got {temperature}")
    groups = list(sensitivities[0])
    for s in sensitivities[1:]:
        if set(s) != set(groups):
            raise L2SError("sens: the models' layer sets differ; they must share one architecture")
    active = active_models(sensitivities)
    coefficients = [dict.fromkeys(groups, 0.0) for _ in sensitivities]
    if not active:
        return coefficients
    sens = torch.tensor(
        [[sensitivities[k][g] for g in groups] for k in active], dtype=torch.float64
    )
    task_specific = sens / sens.norm(dim=1, keepdim=True)
    if len(active) == 1:
        weights = (len(groups) * torch.softmax(task_specific[0] / temperature, dim=0))[None]
    else:
        if alignment is None or len(alignment) != len(active):
            raise L2SError(f"sens: the alignment matrix must cover the {len(active)} active models")
        g = torch.tensor(alignment, dtype=torch.float64)
        cross = g.sum(dim=1) - g.diagonal()
        cross = cross / cross.sum() if cross.sum() > 0 else torch.full_like(cross, 1 / len(active))
        weights = len(active) * torch.softmax(task_specific * cross[:, None] / temperature, dim=0)
    for k, row in zip(active, weights, strict=True):
        coefficients[k] = {grp: alpha * float(w) for grp, w in zip(groups, row, strict=True)}
    return coefficients
