"""The shared pieces task-vector methods are built from: sparsify a task vector (by magnitude
or at random), then reach consensus (elect a sign, average the entries that agree with it).

TIES = trim_by_magnitude -> elect_sign -> disjoint_mean; DARE = drop_random -> (TA | TIES).
"""

from __future__ import annotations

import torch


def per_model(value: float | list[float], n: int, name: str) -> list[float]:
    """A parameter given once for all models, or once per model, as a list of n values."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} models")
        return [float(v) for v in value]
    return [float(value)] * n


def magnitude_threshold(delta: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep`-th largest |delta|, found by selection, not a full sort.

    On CPU numpy's in-place introselect (np.partition) is used: it is O(n), needs no copy
    beyond |delta| itself, and is ~30x faster than torch.kthvalue/topk there.
    """
    return kth_largest_(delta.abs().reshape(-1), keep)


def kth_largest_(magnitude: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep`-th largest entry of the 1-D `magnitude`, reordering it in place."""
    position = magnitude.numel() - keep  # 0-based index of the keep-th largest after partition
    if magnitude.device.type == "cpu":
        array = magnitude.numpy()
        array.partition(position)
        return magnitude[position].clone()
    return torch.kthvalue(magnitude, position + 1).values


def trim_by_magnitude_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude, zero the rest, in
    place (one scratch buffer of |delta|'s size; no sort).

    keep = round(density * n) entries; every entry whose magnitude is at least the keep-th
    largest magnitude is kept (entries tied at the threshold are all kept).
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    n = delta.numel()
    keep = round(density * n)
    if keep >= n:
        return delta
    if keep <= 0:
        return delta.zero_()
    threshold = magnitude_threshold(delta, keep)
    scratch = torch.abs(delta)
    delta.mul_(scratch.ge_(threshold))  # scratch now holds the 0/1 mask
    return delta


def keep_at_least_(delta: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero the entries of `delta` whose magnitude is below `threshold`, in place."""
    return delta.mul_(torch.abs(delta).ge_(threshold))


def magnitude_thresholds(
    task_vector_blocks, n_models: int, numel: int, densities: list[float]
) -> list[float]:
    """Each model's trim threshold (the keep-th largest |δk|, as trim_by_magnitude_ uses),
    from its task vector streamed in blocks of rows: one float32 buffer of |δk|, reused for
    every model, instead of the inputs, the task vector and |δk| all held at once."""
    thresholds: list[float] = []
    buffer: torch.Tensor | None = None
    for k in range(n_models):
        keep = round(densities[k] * numel)
        if keep >= numel:
            thresholds.append(0.0)  # keep everything
            continue
        if keep <= 0:
            thresholds.append(float("inf"))  # keep nothing (inputs are finite)
            continue
        if buffer is None:
            buffer = torch.empty(numel, dtype=torch.float32)
        filled = 0
        for block in task_vector_blocks(k):
            n = block.numel()
            torch.abs(block.reshape(-1), out=buffer[filled : filled + n])
            filled += n
        assert filled == numel, (filled, numel)
        thresholds.append(float(kth_largest_(buffer, keep)))
    return thresholds


def trim_by_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """trim_by_magnitude_ on a copy: the caller's tensor is left as it was."""
    return trim_by_magnitude_(delta.clone(), density)


def drop_random_(
    delta: torch.Tensor, drop_rate: float, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE, in place: drop each entry with probability `drop_rate`, rescale the rest by
    1/(1 - p).

    Random numbers are drawn on the generator's device (CPU by default) so a merge gives the
    same result on CPU and GPU.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    if drop_rate == 0.0:
        return delta
    device = generator.device if generator is not None else torch.device("cpu")
    keep = torch.rand(delta.shape, generator=generator, device=device).ge_(drop_rate)
    return delta.mul_(keep.to(delta.device)).div_(1.0 - drop_rate)


def drop_random(
    delta: torch.Tensor, drop_rate: float, generator: torch.Generator | None
) -> torch.Tensor:
    """drop_random_ on a copy: the caller's tensor is left as it was."""
    return drop_random_(delta.clone(), drop_rate, generator)


def elect_sign(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Per entry, the sign of the summed deltas (+1, -1, or 0 where they cancel exactly)."""
    total = deltas[0].clone()
    for d in deltas[1:]:
        total.add_(d)
    return total.sign_()


def disjoint_mean_(deltas: list[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean of the non-zero deltas whose sign agrees with `sign` (0 if none).

    Consumes `deltas` (they are masked in place) and returns the mean in `deltas[0]`'s memory.
    """
    if len(deltas) == 1:  # a lone delta always agrees with its own sign
        return deltas[0].mul_(sign.ne(0))
    count = torch.zeros(sign.shape, dtype=torch.uint8, device=sign.device)
    total = deltas[0]
    for i, d in enumerate(deltas):
        agrees = torch.mul(d, sign).gt_(0)  # sign(d) == sign and d != 0
        d.mul_(agrees)
        count.add_(agrees.to(torch.uint8))
        del agrees
        if i:
            total.add_(d)
    return total.div_(count.clamp_(min=1))


def disjoint_mean(deltas: list[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """disjoint_mean_ on copies: the caller's deltas are left as they were."""
    return disjoint_mean_([d.clone() for d in deltas], sign)
