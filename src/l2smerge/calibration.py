"""Calibration data and the statistics the calibrated merges need (AIM, Sens-Merging).

* Calibration file: JSONL, one object per line with string fields "question",
  "short_answer", "long_answer" (s1K-style). Each method reads the fields it does best with
  (AIM: question + short answer; Sens: question + both answers); a line becomes the question
  as the CoT chat prompt followed by the chosen answers (`render_sample`).
* AIM: mean |input activation| per input channel of every nn.Linear of the base model,
  normalised by its max to an importance in [0, 1]. Collected streaming: one decoder layer's
  weights in memory at a time (see `activation_importance`).
* Sens: per-layer sensitivity Σ|δ ⊙ ∇L| of each model's task vector from float32 gradients on
  the calibration text, and cross-task logit alignment between the models
  (see `task_sensitivity`, `cross_task_alignment`, `sens_coefficients`).
* Cache: every statistic is stored under $L2SMERGE_CACHE_DIR (default ~/.cache/l2smerge),
  keyed by the fingerprints of the models, of the calibration file, the fields and the
  settings, so a sweep over ω, α or T computes it once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from l2smerge.errors import L2SError
from l2smerge.jsonl import iter_jsonl

CALIBRATION_FIELDS = ("question", "short_answer", "long_answer")
# The study's best calibration text per method (AIM: question + short answer; Sens: all).
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "aim": ("question", "short_answer"),
    "sens": ("question", "short_answer", "long_answer"),
}
DEFAULT_MAX_TOKENS = 1024  # per calibration text; longer texts are truncated
CACHE_VERSION = 2  # bump when a statistic's definition changes: old entries are then ignored


# -- calibration file ------------------------------------------------------------------------


def parse_fields(fields: str | Sequence[str] | None, method: str) -> tuple[str, ...]:
    """'question,short_answer' or a sequence -> validated tuple; None -> the method's default."""
    if fields is None:
        return METHOD_FIELDS[method]
    names = [f.strip() for f in fields.split(",")] if isinstance(fields, str) else list(fields)
    names = [n for n in names if n]
    bad = [n for n in names if n not in CALIBRATION_FIELDS]
    if bad or not names:
        raise L2SError(
            f"calibration fields {','.join(names) or '(none)'!r}: choose from "
            f"{', '.join(CALIBRATION_FIELDS)}"
        )
    return tuple(dict.fromkeys(names))


Sample = dict[str, str]  # the chosen fields of one calibration line, in the chosen order


def read_calibration(path: str | Path, fields: Sequence[str]) -> list[Sample]:
    """The chosen fields of every line of a JSONL calibration file. Every line must be a JSON
    object whose chosen fields are non-empty strings; other fields are ignored."""
    path = Path(path)
    if not path.is_file():
        raise L2SError(f"{path}: calibration file not found")
    samples = []
    try:
        for number, record in iter_jsonl(path):
            sample = {}
            for field in fields:
                value = record.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise L2SError(
                        f"{path}:{number}: field {field!r} missing or not a non-empty string"
                    )
                sample[field] = value.strip()
            samples.append(sample)
    except (OSError, UnicodeDecodeError) as exc:
        raise L2SError(f"{path}: cannot read calibration file ({exc})") from exc
    if not samples:
        raise L2SError(f"{path}: calibration file has no samples")
    return samples


def render_sample(sample: Sample, tokenizer: Any) -> str:
    """One calibration text as the model meets such text in use: the question as the study's
    CoT chat prompt (exactly what `l2smerge eval` sends: system prompt, user turn, assistant
    header; the raw Qwen form without a chat template), then the chosen answers, joined by a
    blank line, as the assistant's reply. Without "question", just the answers."""
    from l2smerge.eval.prompts import cot_messages, render_chat

    answers = "\n\n".join(value for field, value in sample.items() if field != "question")
    if "question" not in sample:
        return answers
    return render_chat(cot_messages(sample["question"]), tokenizer) + answers


# -- fingerprints and cache ------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(path: str | Path) -> str:
    """A content fingerprint of a model directory that costs milliseconds, not a full hash:
    config.json, then per weight file its name, size, header and three sampled 64 KiB blocks
    (start, middle, end of the data). Two checkpoints that differ only in a few untouched
    bytes could collide; fine-tuned children of one base, or any re-saved model, do not."""
    path = Path(path)
    digest = hashlib.sha256()
    config = path / "config.json"
    if not config.is_file():
        raise L2SError(f"{path}: not a model directory (no config.json)")
    digest.update(config.read_bytes())
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        raise L2SError(f"{path}: no *.safetensors weights to fingerprint")
    for file in weight_files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as fh:
            for offset in (0, max(0, size // 2 - 32768), max(0, size - 65536)):
                fh.seek(offset)
                digest.update(fh.read(65536))
    return digest.hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("L2SMERGE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "l2smerge"


def cache_key(kind: str, **parts: Any) -> str:
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, **parts}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a cache entry; a cache that cannot be written costs time later, not this merge."""
    from rich.console import Console

    from l2smerge.atomic import write_bytes_atomic

    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        Console(stderr=True).print(
            f"[yellow]warning:[/] cannot write the calibration cache {path} ({exc.strerror}); "
            "set L2SMERGE_CACHE_DIR to a writable folder to reuse statistics",
            highlight=False,
        )


def load_cached_tensors(key: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None


def save_cached_tensors(key: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save

    data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    _write_atomic(
        cache_dir() / f"{key}.safetensors", save(data, metadata={"key": json.dumps(meta)})
    )


def load_cached_json(key: str) -> Any | None:
    path = cache_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError):
        return None


def save_cached_json(key: str, value: Any, meta: dict) -> None:
    _write_atomic(cache_dir() / f"{key}.json", json.dumps({"meta": meta, "value": value}).encode())


# -- shared model plumbing ---------------------------------------------------------------------


@contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
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


def _tokenize(model_path: Path, samples: Sequence[Sample], max_tokens: int) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as exc:
        raise L2SError(f"{model_path}: cannot load its tokenizer ({exc})") from exc
    ids = []
    for sample in samples:
        text = render_sample(sample, tokenizer)
        encoded = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
        if encoded:
            ids.append(torch.tensor(encoded, dtype=torch.long))
    if not ids:
        raise L2SError(f"{model_path}: its tokenizer turned every calibration text into 0 tokens")
    return ids


def _load_full_model(model_path: Path, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except Exception as exc:
        raise L2SError(f"{model_path}: cannot load the model ({exc})") from exc
    return model.to(device).eval()


# -- AIM: activation importance --------------------------------------------------------------


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


def _decoder_parts(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """(prefix, decoder) when the model has the usual decoder-only layout that streaming
    needs (embed_tokens, layers, rotary_emb); None otherwise."""
    prefix = getattr(model, "base_model_prefix", "model")
    decoder = getattr(model, prefix, None)
    needed = ("embed_tokens", "layers", "rotary_emb")
    if decoder is None or not all(hasattr(decoder, a) for a in needed):
        return None
    return prefix, decoder


def _materialise(module: torch.nn.Module, prefix: str, checkpoint: Any, device: str) -> None:
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


def _causal_mask(length: int, device: str) -> torch.Tensor:
    mask = torch.full((length, length), torch.finfo(torch.float32).min, device=device)
    return torch.triu(mask, diagonal=1)[None, None]


def activation_importance(
    model_path: str | Path,
    samples: Sequence[Sample],
    *,
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    stream: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-input-channel importance in [0, 1] for every nn.Linear of the model at `model_path`
    except the output head (an embedding, which AIM leaves alone), keyed by module name (the
    weight is "<name>.weight"): mean |input| over all calibration tokens, divided by its max.

    stream=True (and a standard decoder-only layout): the model is built on the meta device
    and one part at a time gets real float32 weights — the embeddings, then each decoder
    layer in turn — while every sample's hidden states are carried from part to part.
    Peak memory: one layer's weights plus the hidden states of all samples (for 7B, 100
    samples of 1,024 tokens: 1.5 GB); the final norm and head are never loaded. Otherwise the
    whole model is loaded with hooks.
    Samples run one at a time without padding, so no attention mask is needed beyond causal.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from l2smerge.checkpoint import Checkpoint

    model_path = Path(model_path)
    ids = _tokenize(model_path, samples, max_tokens)
    stats = _ChannelMeans()
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parts = _decoder_parts(skeleton) if stream else None
    if parts is None:
        model = _load_full_model(model_path, device, torch.float32)
        head = model.get_output_embeddings()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.register_forward_hook(stats.hook(name))
        with torch.no_grad(), _progress(len(ids), "activations", progress) as step:
            for sample in ids:
                model(input_ids=sample[None].to(device))
                step()
        return stats.importance()

    prefix, decoder = parts
    checkpoint = Checkpoint(model_path)
    rotary = type(decoder.rotary_emb)(config=config).to(device)
    layers = list(decoder.layers)
    with torch.no_grad(), _progress(len(layers) + 1, "activations", progress) as step:
        _materialise(decoder.embed_tokens, f"{prefix}.embed_tokens", checkpoint, device)
        hidden = [decoder.embed_tokens(sample[None].to(device)) for sample in ids]
        decoder.embed_tokens.to("meta")
        step()
        for index, layer in enumerate(layers):
            layer_prefix = f"{prefix}.layers.{index}"
            _materialise(layer, layer_prefix, checkpoint, device)
            handles = [
                module.register_forward_hook(stats.hook(f"{layer_prefix}.{name}"))
                for name, module in layer.named_modules()
                if isinstance(module, torch.nn.Linear)
            ]
            for i, h in enumerate(hidden):
                positions = torch.arange(h.shape[1], device=device)[None]
                out = layer(
                    h,
                    attention_mask=_causal_mask(h.shape[1], device),
                    position_ids=positions,
                    position_embeddings=rotary(h, positions),
                )
                hidden[i] = out[0] if isinstance(out, tuple) else out
            for handle in handles:
                handle.remove()
            layer.to("meta")
            step()
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


# -- Sens: sensitivities, cross-task alignment, coefficients ----------------------------------

_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def layer_group(tensor_name: str) -> str:
    """The Sens 'layer' a tensor belongs to: its decoder layer ("model.layers.3"), else its
    own module ("model.embed_tokens", "model.norm", "lm_head")."""
    match = _LAYER.match(tensor_name)
    if match:
        return match.group(1)
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def task_sensitivity(
    model_path: str | Path,
    base_path: str | Path,
    samples: Sequence[Sample],
    *,
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> dict[str, float]:
    """S^l = mean over calibration texts of Σ_{params in layer l} |δ ⊙ ∇L| for one model:
    δ = θ_model − θ_base, ∇L the float32 gradient of the model's own next-token loss on the
    text (every token predicted). Needs the whole model in float32 with its gradients, plus
    δ in the base checkpoint's dtype."""
    from l2smerge.checkpoint import Checkpoint

    model_path = Path(model_path)
    ids = _tokenize(model_path, samples, max_tokens)
    model = _load_full_model(model_path, device, torch.float32)
    base = Checkpoint(base_path)
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
        delta = (param.detach() - stored.to(device, torch.float32)).to(stored.dtype)
        deltas[name] = (layer_group(name), param, delta)
    totals: dict[str, float] = dict.fromkeys((g for g, _, _ in deltas.values()), 0.0)
    with _progress(len(ids), f"sensitivity {model_path.name}", progress) as step:
        for sample in ids:
            if sample.numel() < 2:
                step()
                continue
            model.zero_grad(set_to_none=True)
            inputs = sample[None].to(device)
            model(input_ids=inputs, labels=inputs).loss.backward()
            for group, param, delta in deltas.values():
                if param.grad is not None:
                    totals[group] += float((delta.float() * param.grad).abs().sum())
            step()
    del model
    return {group: total / len(ids) for group, total in totals.items()}


def _log_probs(model: torch.nn.Module, sample: torch.Tensor, device: str) -> torch.Tensor:
    logits = model(input_ids=sample[None].to(device)).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def cross_task_alignment(
    model_paths: Sequence[str | Path],
    samples: Sequence[Sequence[Sample]],
    *,
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> list[list[float]]:
    """g[k][j] = exp(−mean over task-j tokens of KL(p_j ‖ p_k)): how closely model k
    reproduces expert j's next-token distributions on expert j's calibration texts (1 on the
    diagonal). All models are loaded together (inference only)."""
    models = [_load_full_model(Path(p), device, torch.float32) for p in model_paths]
    k_models = len(models)
    g = [[1.0] * k_models for _ in range(k_models)]
    with torch.no_grad(), _progress(k_models, "cross-task alignment", progress) as step:
        for j in range(k_models):
            ids = _tokenize(Path(model_paths[j]), samples[j], max_tokens)
            kl_sums = [0.0] * k_models
            tokens = 0
            for sample in ids:
                expert = _log_probs(models[j], sample, device)
                for k in range(k_models):
                    if k == j:
                        continue
                    other = _log_probs(models[k], sample, device)
                    vocab = min(expert.shape[-1], other.shape[-1])
                    p = expert[:, :vocab]
                    kl = (p.exp() * (p - other[:, :vocab])).sum(dim=-1)
                    kl_sums[k] += float(kl.sum())
                tokens += sample.numel()
            for k in range(k_models):
                if k != j:
                    g[k][j] = math.exp(-kl_sums[k] / tokens)
            step()
    return g


def sens_statistics(
    base: str | Path,
    models: Sequence[str | Path],
    calibration: str | Path | Sequence[str | Path],
    *,
    fields: Sequence[str] = METHOD_FIELDS["sens"],
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> tuple[list[dict[str, float]], list[list[float]] | None]:
    """(per-model layer sensitivities, cross-task alignment matrix or None for one model),
    each through the disk cache. `calibration` is one file for every model or one per model
    (model k's task data)."""
    files = (
        [Path(calibration)] * len(models)
        if isinstance(calibration, (str, Path))
        else [Path(c) for c in calibration]
    )
    if len(files) != len(models):
        raise L2SError(f"sens: {len(files)} calibration files for {len(models)} models")
    samples = [read_calibration(f, fields) for f in files]
    data = [file_sha256(f) for f in files]
    model_fps = [model_fingerprint(m) for m in models]
    base_fp = model_fingerprint(base)
    common = {"fields": list(fields), "max_tokens": max_tokens}
    sensitivities = []
    for k, model in enumerate(models):
        meta = {"model": model_fps[k], "base": base_fp, "data": data[k], **common}
        key = cache_key("sens-sensitivity", **meta)
        value = load_cached_json(key)
        if value is None:
            value = task_sensitivity(
                model, base, samples[k], device=device, max_tokens=max_tokens, progress=progress
            )
            save_cached_json(key, value, meta)
        sensitivities.append(value)
    if len(models) < 2:
        return sensitivities, None
    meta = {"models": model_fps, "data": data, **common}
    key = cache_key("sens-alignment", **meta)
    alignment = load_cached_json(key)
    if alignment is None:
        alignment = cross_task_alignment(
            models, samples, device=device, max_tokens=max_tokens, progress=progress
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
    k_models = len(sensitivities)
    groups = list(sensitivities[0])
    for s in sensitivities[1:]:
        if set(s) != set(groups):
            raise L2SError("sens: the models' layer sets differ; they must share one architecture")
    sens = torch.tensor([[s[g] for g in groups] for s in sensitivities], dtype=torch.float64)
    norms = sens.norm(dim=1, keepdim=True)
    task_specific = torch.where(norms > 0, sens / norms.clamp_min(1e-300), 0.0)
    if k_models == 1:
        weights = len(groups) * torch.softmax(task_specific[0] / temperature, dim=0)
        return [{g: alpha * float(w) for g, w in zip(groups, weights, strict=True)}]
    g = torch.tensor(alignment, dtype=torch.float64)
    cross = g.sum(dim=1) - g.diagonal()
    cross = cross / cross.sum() if cross.sum() > 0 else torch.full_like(cross, 1 / k_models)
    weights = k_models * torch.softmax(task_specific * cross[:, None] / temperature, dim=0)
    return [{grp: alpha * float(w) for grp, w in zip(groups, row, strict=True)} for row in weights]
