"""Sens-Merging statistics streamed one part of the model at a time, the way offloaded
training runs a model larger than its memory.

Sensitivities (per chunk of calibration texts whose hidden states fit BOUNDARY_BUDGET_BYTES):
1. Forward, no gradients: the embedding rows the texts use, then each decoder layer in turn
   (loaded, run on every text of the chunk, dropped), keeping each layer's input: the
   "boundary" hidden states.
2. Backward from the top, one text at a time inside each part: the final norm and the output
   head (read in blocks of rows, twice per chunk: each text's log-sum-exp over the vocabulary,
   then the loss gradient of each block's logits, exact: softmax − one-hot over the token
   count), then each decoder layer from the last: loaded with its task vector
   δ, its forward recomputed from the saved input with gradients, Σ|δ ⊙ ∂L/∂θ| added to the
   layer's total, the input gradient passed down, the layer dropped. Last, the embedding rows
   the text used (tied to the head: the head's and the embedding's gradients are summed
   before |δ ⊙ ·| is taken, as for the one tensor they are).
δ comes from reads of the two checkpoints, one part (or block of rows) at a time.

Cross-task alignment: each model's forward streams the same way (no boundaries, no
gradients) to its final-norm outputs; the logits are made one text at a time from the head
read in blocks of rows.

Peak memory: one decoder layer in float32 with its gradients and δ, the boundary hidden
states of one chunk, one block of the head's rows and each text's logits on it. The numbers
equal the whole-model path's (calibration.sensitivity) to float32 round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from l2smerge.calibration.models import (
    LayerStream,
    freed_memory_returned,
    progress_bar,
    read_row_set,
    row_blocks,
)
from l2smerge.calibration.sensitivity import abs_product_sum, layer_group, task_delta
from l2smerge.merge.checkpoint import Checkpoint
from l2smerge.util.errors import L2SError

# Hidden states kept between the forward and the backward sweep; texts are taken in chunks
# that fit (one text at least). Each chunk reads every part of the model twice.
BOUNDARY_BUDGET_BYTES = 1 << 30
# Token rows of the logits turned into probabilities at once (bounds the temporaries).
TOKEN_ROWS = 32


def sample_chunks(
    ids: Sequence[torch.Tensor], bytes_per_token: int, min_tokens: int
) -> list[list[int]]:
    """Indices of the texts of at least `min_tokens` tokens, in order, grouped so each
    group's hidden states fit BOUNDARY_BUDGET_BYTES."""
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, sample in enumerate(ids):
        if sample.numel() < min_tokens:
            continue
        cost = sample.numel() * bytes_per_token
        if current and used + cost > BOUNDARY_BUDGET_BYTES:
            chunks.append(current)
            current, used = [], 0
        current.append(index)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def _read_task_vector(
    stream: LayerStream, base: Checkpoint, name: str, start: int | None = None, stop: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's float32 weight on the device, δ in the base's dtype) of a tensor, or of
    its rows start..stop-1."""
    if start is None:
        weight, stored = stream.checkpoint.read(name), base.read(name)
    else:
        weight = stream.checkpoint.read_rows(name, start, stop)
        stored = base.read_rows(name, start, stop)
    weight = weight.to(stream.device, torch.float32)
    return weight, task_delta(weight, stored.to(stream.device))


def _check_shapes(stream: LayerStream, base: Checkpoint) -> list[tuple[str, torch.Size]]:
    """Every parameter of the model, checked against both checkpoints' headers (no reads)."""
    params = [(name, p.shape) for name, p in stream.skeleton.named_parameters()]
    for name, shape in params:
        if name not in base:
            raise L2SError(f"{base.path}: tensor {name!r} (in {stream.path}) is missing")
        if name not in stream.checkpoint:
            raise L2SError(f"{stream.path}: tensor {name!r} is missing")
        own = stream.checkpoint.info(name).shape
        if own != tuple(shape):
            raise L2SError(
                f"{stream.path}: tensor {name!r} has shape {own}, its config gives {tuple(shape)}"
            )
        stored = base.info(name).shape
        if stored != tuple(shape):
            raise L2SError(
                f"{base.path}: tensor {name!r} has shape {stored}, {stream.path} has {own}"
            )
    return params


def _has_task_vector(stream: LayerStream, base: Checkpoint, names: Sequence[str]) -> bool:
    """Whether any δ entry is non-zero; smallest tensors first, big ones in blocks of rows."""
    for name in sorted(names, key=lambda n: base.info(n).nbytes):
        info = base.info(name)
        if not info.shape:
            if _read_task_vector(stream, base, name)[1].any():
                return True
            continue
        for start, stop in row_blocks(info.shape):
            if _read_task_vector(stream, base, name, start, stop)[1].any():
                return True
    return False


def _log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    for start in range(0, logits.shape[0], TOKEN_ROWS):
        rows = logits[start : start + TOKEN_ROWS]
        rows.sub_(rows.logsumexp(dim=1, keepdim=True))
    return logits


@dataclass
class _TiedRows:
    """The output head's gradient and δ on the rows a text's embedding uses (tied weights):
    added to the embedding's gradient before |δ ⊙ ·| is taken."""

    rows: torch.Tensor
    grad: torch.Tensor
    delta: torch.Tensor


class _Sweep:
    """One model's sensitivity totals, accumulated part by part over chunks of texts."""

    def __init__(self, stream: LayerStream, base: Checkpoint, names: Sequence[str]) -> None:
        self.stream = stream
        self.base = base
        self.totals: dict[str, float] = dict.fromkeys((layer_group(n) for n in names), 0.0)

    def add(self, name: str, delta: torch.Tensor, grad: torch.Tensor | None) -> None:
        if grad is not None:
            self.totals[layer_group(name)] += abs_product_sum(delta, grad)

    def forward(
        self, ids: list[torch.Tensor], step: Callable[[], None]
    ) -> list[list[torch.Tensor | None]]:
        """Each text's input to every layer and the last layer's output."""
        stream = self.stream
        with torch.no_grad():
            boundaries: list[list[torch.Tensor | None]] = [[stream.embed(t)] for t in ids]
            step()
            for index, layer in enumerate(stream.layers):
                stream.load(layer, stream.layer_prefix(index))
                for kept in boundaries:
                    kept.append(stream.run_layer(layer, kept[-1]))
                stream.drop(layer)
                step()
        return boundaries

    def head(
        self, ids: list[torch.Tensor], finals: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[_TiedRows | None]]:
        """Through the output head and the final norm: the gradient at each text's last-layer
        output (and, tied, the head's gradient on the rows its embedding uses)."""
        stream = self.stream
        norm_prefix = f"{stream.prefix}.norm"
        stream.load(stream.norm, norm_prefix)
        norm_params = [(f"{norm_prefix}.{n}", p) for n, p in stream.norm.named_parameters()]
        norm_deltas = [_read_task_vector(stream, self.base, n)[1] for n, _ in norm_params]
        inputs, normed = [], []
        for final in finals:
            x = final.detach().requires_grad_(True)
            with torch.enable_grad():
                normed.append(stream.norm(x)[0, :-1])
            inputs.append(x)
        hidden_grads, tied = self._output_head(ids, [n.detach() for n in normed])
        grads = []
        for x, out_normed, hidden_grad in zip(inputs, normed, hidden_grads, strict=True):
            out = torch.autograd.grad(
                out_normed, [x, *(p for _, p in norm_params)], hidden_grad, allow_unused=True
            )
            for (name, _), delta, grad in zip(norm_params, norm_deltas, out[1:], strict=True):
                self.add(name, delta, grad)
            grads.append(out[0])
        stream.drop(stream.norm)
        return grads, tied

    def _output_head(
        self, samples: list[torch.Tensor], hiddens: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[_TiedRows | None]]:
        """The chunk's texts through the output head, read in blocks of rows twice per chunk
        (not per text): first each text's log-sum-exp over the vocabulary, then per block the
        loss gradient of the logits (softmax − one-hot, over the token count). Adds each
        text's Σ|δ ⊙ ∂L/∂W| and returns ∂L/∂(final-norm output) per text, plus (tied) the
        rows each text's embedding shares."""
        stream, device = self.stream, self.stream.device
        head = stream.head_name
        labels = [sample[1:].to(device) for sample in samples]
        log_norms = [h.new_full((h.shape[0],), -math.inf) for h in hiddens]
        for start, stop in stream.head_blocks():
            weight = stream.checkpoint.read_rows(head, start, stop).to(device, torch.float32)
            for i, hidden in enumerate(hiddens):
                block_norm = (hidden @ weight.T).logsumexp(dim=1)
                log_norms[i] = torch.logaddexp(log_norms[i], block_norm)
        hidden_grads = [torch.zeros_like(h) for h in hiddens]
        kept: list[_TiedRows | None] = [None] * len(samples)
        if stream.tied:
            dtype = self.base.info(head).dtype
            for i, (sample, hidden) in enumerate(zip(samples, hiddens, strict=True)):
                rows = torch.unique(sample).to(device)
                shape = (len(rows), hidden.shape[1])
                kept[i] = _TiedRows(
                    rows, hidden.new_zeros(shape), hidden.new_zeros(shape, dtype=dtype)
                )
        total = 0.0
        for start, stop in stream.head_blocks():
            weight, delta = _read_task_vector(stream, self.base, head, start, stop)
            for i, hidden in enumerate(hiddens):
                block = (hidden @ weight.T).sub_(log_norms[i][:, None]).exp_()
                inside = (labels[i] >= start) & (labels[i] < stop)
                block[inside.nonzero()[:, 0], labels[i][inside] - start] -= 1.0
                block.div_(hidden.shape[0])
                hidden_grads[i].addmm_(block, weight)
                weight_grad = block.T @ hidden
                tied = kept[i]
                if tied is not None:
                    within = (tied.rows >= start) & (tied.rows < stop)
                    local = tied.rows[within] - start
                    tied.grad[within] = weight_grad[local]
                    tied.delta[within] = delta[local]
                    weight_grad[local] = 0.0
                total += abs_product_sum(delta, weight_grad)
        self.totals[layer_group(head)] += total
        return hidden_grads, kept

    def layer(
        self,
        index: int,
        boundaries: list[list[torch.Tensor | None]],
        grads: list[torch.Tensor],
    ) -> None:
        """Layer `index` backward for every text: gradients in `grads` move below it."""
        stream = self.stream
        layer, prefix = stream.layers[index], stream.layer_prefix(index)
        stream.load(layer, prefix)
        params = [(f"{prefix}.{n}", p) for n, p in layer.named_parameters()]
        deltas = [_read_task_vector(stream, self.base, n)[1] for n, _ in params]
        for i, kept in enumerate(boundaries):
            x = kept[index].detach().requires_grad_(True)
            kept[index + 1] = None
            grads[i] = self._layer_backward(layer, params, deltas, x, grads[i])
        stream.drop(layer)

    def _layer_backward(
        self,
        layer: torch.nn.Module,
        params: list[tuple[str, torch.nn.Parameter]],
        deltas: list[torch.Tensor],
        x: torch.Tensor,
        grad: torch.Tensor,
    ) -> torch.Tensor:
        """One text through one layer backward (forward recomputed): adds Σ|δ ⊙ ∂L/∂θ| and
        returns the gradient at the layer's input."""
        with torch.enable_grad():
            out = self.stream.run_layer(layer, x)
        result = torch.autograd.grad(out, [x, *(p for _, p in params)], grad, allow_unused=True)
        for (name, _), delta, param_grad in zip(params, deltas, result[1:], strict=True):
            self.add(name, delta, param_grad)
        return result[0]

    def embedding(
        self, ids: list[torch.Tensor], grads: list[torch.Tensor], tied: list[_TiedRows | None]
    ) -> None:
        """The embedding rows each text used: their gradient is the sum of the input
        gradients at the positions holding them (none for the padding row)."""
        stream, device = self.stream, self.stream.device
        for sample, grad, kept in zip(ids, grads, tied, strict=True):
            rows, where = torch.unique(sample, return_inverse=True)
            rows = rows.to(device)
            row_grad = grad.new_zeros(len(rows), grad.shape[-1])
            row_grad.index_add_(0, where.to(device), grad[0])
            if stream.padding_idx is not None:
                row_grad[rows == stream.padding_idx] = 0.0
            if kept is not None:
                row_grad += kept.grad
                delta = kept.delta
            else:
                cpu_rows = rows.cpu()
                weight = read_row_set(stream.checkpoint, stream.embed_name, cpu_rows)
                stored = read_row_set(self.base, stream.embed_name, cpu_rows)
                delta = task_delta(weight.to(device, torch.float32), stored.to(device))
            self.add(stream.embed_name, delta, row_grad)


def streamed_task_sensitivity(
    stream: LayerStream,
    base: Checkpoint,
    ids: Sequence[torch.Tensor],
    *,
    progress: bool = True,
) -> dict[str, float]:
    """`task_sensitivity` part by part (see the module's docstring); `ids` are the
    tokenized calibration texts."""
    names = [name for name, _ in _check_shapes(stream, base)]
    sweep = _Sweep(stream, base, names)
    if not _has_task_vector(stream, base, names):
        return sweep.totals  # a zero task vector: every sensitivity is 0, no gradient pass
    hidden = stream.config.hidden_size
    per_token = 4 * hidden * (len(stream.layers) + 2)
    chunks = sample_chunks(ids, per_token, min_tokens=2)
    steps = len(chunks) * (2 * len(stream.layers) + 3)
    progress_ = progress_bar(steps, f"sensitivity {stream.path.name}", progress)
    with freed_memory_returned(), progress_ as step:
        for chunk in chunks:
            texts = [ids[i] for i in chunk]
            boundaries = sweep.forward(texts, step)
            grads, tied = sweep.head(texts, [kept[-1] for kept in boundaries])
            step()
            for index in reversed(range(len(stream.layers))):
                sweep.layer(index, boundaries, grads)
                step()
            sweep.embedding(texts, grads, tied)
            step()
    return {group: total / len(ids) for group, total in sweep.totals.items()}


def _final_hidden(stream: LayerStream, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each text's final-norm output [T, hidden], the model streamed layer by layer."""
    with torch.no_grad():
        hidden = [stream.embed(t) for t in ids]
        for index, layer in enumerate(stream.layers):
            stream.load(layer, stream.layer_prefix(index))
            hidden = [stream.run_layer(layer, h) for h in hidden]
            stream.drop(layer)
        stream.load(stream.norm, f"{stream.prefix}.norm")
        normed = [stream.norm(h)[0] for h in hidden]
        stream.drop(stream.norm)
    return normed


def streamed_alignment(
    streams: Sequence[LayerStream],
    task_ids: Sequence[Sequence[torch.Tensor]],
    *,
    progress: bool = True,
) -> list[list[float]]:
    """`cross_task_alignment` with every model streamed: per chunk of expert j's texts,
    each model's final-norm outputs, then per text the log-probabilities of expert j and of
    each other model, the head read in blocks of rows."""
    from l2smerge.calibration.sensitivity import summed_kl

    k_models = len(streams)
    g = [[1.0] * k_models for _ in range(k_models)]
    per_token = 4 * k_models * max(s.config.hidden_size for s in streams)
    progress_ = progress_bar(k_models, "cross-task alignment", progress)
    with torch.no_grad(), freed_memory_returned(), progress_ as step:
        for j in range(k_models):
            ids = task_ids[j]
            kl_sums = [0.0] * k_models
            for chunk in sample_chunks(ids, per_token, min_tokens=1):
                texts = [ids[i] for i in chunk]
                finals = [_final_hidden(stream, texts) for stream in streams]
                for n in range(len(texts)):
                    expert = _log_softmax_(streams[j].head_logits(finals[j][n]))
                    for k in range(k_models):
                        if k != j:
                            other = _log_softmax_(streams[k].head_logits(finals[k][n]))
                            kl_sums[k] += summed_kl(expert, other)
            tokens = sum(sample.numel() for sample in ids)
            for k in range(k_models):
                if k != j:
                    g[k][j] = math.exp(-kl_sums[k] / tokens)
            step()
    return g
