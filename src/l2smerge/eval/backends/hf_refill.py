"""Greedy generation that keeps a batch full: a row leaves the running batch the step its
response ends and a waiting prompt takes its place, so finished responses stop costing
compute (a static batch runs until its longest response ends).

The running batch is one key/value cache with a row per response, left-padded to the longest
row; an attention mask hides the padding and each row's positions count its own tokens only,
so every row sees what it would see generated alone. Joining rows are prefilled together and
padded (or pad the rows already running) to one length; leaving rows are cut out and padding
no row needs any more is trimmed. This edits the cache's tensors, so it runs only where the
model's cache is transformers' plain per-layer DynamicCache (`supports_refill`); elsewhere
hf.py keeps `model.generate` on static batches."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# A response ends here: (the row's token ids so far) -> True once it needs no more tokens.
Finished = Callable[[list[int]], bool]


@dataclass
class Job:
    """One prompt to answer: its token ids, its own token limit and end test."""

    index: int
    prompt: list[int]
    limit: int
    finished: Finished
    generated: list[int] = field(default_factory=list)

    def done(self) -> bool:
        return len(self.generated) >= self.limit or self.finished(self.generated)


def ends_at(stop_ids: Collection[int], stop: Sequence[str], tokenizer: Any) -> Finished:
    """The end test of a response: its last token is a stop id, or its text holds a stop
    string (what follows is cut off by `finish`, so stopping there loses nothing). Only the
    tail is decoded: a stop string ending in the last token starts at most 4 bytes per
    character, so as many tokens, back."""
    stop_ids = frozenset(stop_ids)
    stop = [s for s in stop if s]
    window = 4 * max((len(s) for s in stop), default=0) + 2

    def finished(ids: list[int]) -> bool:
        if ids[-1] in stop_ids:
            return True
        if not stop:
            return False
        tail = tokenizer.decode(
            ids[-window:], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return any(s in tail for s in stop)

    return finished


def _cache_argument(model: Any) -> str | None:
    """The name under which the model's forward takes the cache (`cache` in transformers 5.2x,
    `past_key_values` before), or None when it takes neither."""
    parameters = inspect.signature(model.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in parameters), None)


def _new_cache(model: Any) -> Any | None:
    """An empty DynamicCache for the model whose every layer is a plain DynamicLayer, else
    None (sliding-window, linear-attention or quantized layers, or a transformers that has no
    per-layer caches): those keep their own bookkeeping that padding and row edits would break."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:
        return None
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return cache


def supports_refill(model: Any) -> bool:
    """Whether `generate_refilled` can run this model."""
    if (
        _cache_argument(model) is None
        or "position_ids" not in inspect.signature(model.forward).parameters
    ):
        return False
    return _new_cache(model) is not None


class _RunningBatch:
    """The rows being generated: their jobs, one cache, the attention mask over its columns."""

    def __init__(self, model: Any, pad_id: int, device: str):
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.cache_argument = _cache_argument(model)
        # logits of the last position only, where the model can (transformers >= 4.50)
        parameters = inspect.signature(model.forward).parameters
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.jobs: list[Job] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (rows, columns), 1 where a row has a token
        self.lengths: torch.Tensor | None = None  # (rows,) each row's own tokens so far

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **self.last_logits,
            **{self.cache_argument: cache},
        )
        return out.logits[:, -1, :].argmax(dim=-1).tolist()

    @torch.inference_mode()
    def admit(self, jobs: list[Job]) -> None:
        """Prefill `jobs` together, give each its first token, and join them to the batch."""
        width = max(len(j.prompt) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt) :] = torch.tensor(job.prompt)
            mask[row, width - len(job.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.model)
        first = self._forward(ids, mask, positions, cache)
        for job, token in zip(jobs, first, strict=True):
            job.generated.append(token)
        lengths = mask.sum(-1)
        if self.cache is None:
            self.cache, self.mask, self.lengths, self.jobs = cache, mask, lengths, list(jobs)
            return
        joined = max(self.mask.shape[1], width)
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, joined), _pad_left(new.keys, joined)])
            old.values = torch.cat([_pad_left(old.values, joined), _pad_left(new.values, joined)])
        self.mask = torch.cat([_pad_left(self.mask, joined), _pad_left(mask, joined)])
        self.lengths = torch.cat([self.lengths, lengths])
        self.jobs.extend(jobs)

    @torch.inference_mode()
    def release(self, rows: list[int]) -> None:
        """Drop `rows` from the batch, then the leading columns no remaining row uses."""
        leaving = set(rows)
        keep = [r for r in range(len(self.jobs)) if r not in leaving]
        self.jobs = [self.jobs[r] for r in keep]
        if not keep:
            self.cache = self.mask = self.lengths = None
            return
        index = torch.tensor(keep, device=self.device)
        self.mask = self.mask.index_select(0, index)
        self.lengths = self.lengths.index_select(0, index)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    @torch.inference_mode()
    def step(self) -> None:
        """One token more for every row."""
        last = torch.tensor([[job.generated[-1]] for job in self.jobs], device=self.device)
        ones = torch.ones((len(self.jobs), 1), dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        positions = self.lengths.unsqueeze(1)
        tokens = self._forward(last, self.mask, positions, self.cache)
        self.lengths = self.lengths + 1
        for job, token in zip(self.jobs, tokens, strict=True):
            job.generated.append(token)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`tensor` with zeros before its sequence columns up to `width` (dim 1 of a mask, dim 2
    of a cache's keys or values)."""
    dim = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def generate_refilled(
    model: Any, jobs: Sequence[Job], *, batch_size: int, pad_id: int, device: str
) -> Iterator[Job]:
    """Greedy generation of `jobs` (in the order given), at most `batch_size` at a time;
    yields each job as its response ends, with `generated` filled (the token that ended it
    included). Responses equal generating each prompt alone (up to float round-off in
    near-ties)."""
    waiting = list(jobs)
    batch = _RunningBatch(model, pad_id, device)
    while waiting or batch.jobs:
        room = batch_size - len(batch.jobs)
        if waiting and room > 0:
            joining, waiting = waiting[:room], waiting[room:]
            batch.admit(joining)
        ended = [row for row, job in enumerate(batch.jobs) if job.done()]
        if ended:
            finished = [batch.jobs[row] for row in ended]
            batch.release(ended)
            yield from finished
            continue  # refill the freed rows before the next step
        batch.step()
