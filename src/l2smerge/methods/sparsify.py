"""The shared pieces task-vector methods are built from: sparsify a task vector (by magnitude
or at random), then reach consensus (elect a sign, combine the entries that agree with it).

TIES = trim_by_magnitude -> elect_sign -> disjoint_mean; DARE = drop_random -> (TA | TIES).

Two rule sets for the details a formula leaves open (`tie_break`):
  "l2smerge"  keep = round(density·n) entries, every entry tied at the threshold kept; an
              exact sign cancellation elects 0 (the entry keeps the base).
  "mergekit"  mergekit's (0.1.5) `magnitude` and `get_mask`: keep = max(1, ⌊density·n⌋)
              entries exactly (0 when density ≤ 0), the ties at the threshold chosen as
              torch.argsort(|δ|, descending=True) orders them on CPU; an exact cancellation
              elects +.
Rescaling the survivors (`rescale`): "inverse" multiplies by 1/(1 − p) (the DARE paper),
"l1" matches the tensor's L1 norm before sparsification (mergekit's `rescale: true`), "none".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

TIE_BREAKS = ("l2smerge", "mergekit")
# mergekit's rescaled_masked_tensor: no rescale when either L1 norm is below this.
L1_EPS = 1e-7


def per_model(value: float | list[float], n: int, name: str) -> list[float]:
    """A parameter given once for all models, or once per model, as a list of n values."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} models")
        return [float(v) for v in value]
    return [float(value)] * n


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """A string parameter that is one value for all models, from `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} = {value!r}: expected one of {', '.join(choices)}")
    return value


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} = {value!r}: expected true or false")
    return value


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


def keep_count(density: float, numel: int, tie_break: str) -> int:
    """How many entries of a task vector of `numel` entries a magnitude trim keeps."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if tie_break == "mergekit":
        if density <= 0 or numel == 0:
            return 0
        return numel if density >= 1 else max(1, int(density * numel))
    return round(density * numel)


@dataclass(frozen=True)
class MagnitudeTrim:
    """One model's magnitude trim of one whole tensor, decided before any entry is zeroed, so
    that blocks of rows can later be trimmed exactly as the whole tensor would be."""

    threshold: float  # entries with |δ| >= threshold are kept ...
    # ... except entries tied at the threshold whose flat index is not listed here (sorted
    # int64); None keeps every tied entry
    tied_kept: torch.Tensor | None = None
    scale: float = 1.0  # multiplies the kept entries ("l1" rescale)

    @property
    def keeps_all(self) -> bool:
        return self.threshold == 0.0 and self.scale == 1.0


def plan_magnitude_trim(
    fill: Callable[[torch.Tensor], None],
    numel: int,
    density: float,
    *,
    tie_break: str = "l2smerge",
    rescale: str = "none",
    buffer: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> MagnitudeTrim:
    """Decide the trim of a task vector δ of `numel` entries. `fill(buffer)` writes |δ|,
    flattened in storage order, into a float32 buffer of `numel` entries (the whole tensor at
    once, or streamed from row blocks); it is called once, or up to three times when the
    mergekit rule meets ties at the threshold or the L1 norms are needed. `buffer` (reused
    between calls) or a new one on `device` holds |δ|."""
    check_choice("tie_break", tie_break, TIE_BREAKS)
    check_choice("rescale", rescale, ("none", "l1"))
    keep = keep_count(density, numel, tie_break)
    if keep >= numel:
        return MagnitudeTrim(0.0)  # keep everything: unchanged, as both rule sets leave it
    if keep <= 0:
        return MagnitudeTrim(math.inf)  # keep nothing (inputs are finite)
    if buffer is None:
        buffer = torch.empty(numel, dtype=torch.float32, device=device)
    fill(buffer)
    before = buffer.sum() if rescale == "l1" else None
    threshold = float(kth_largest_(buffer, keep))
    in_order = False  # buffer no longer in storage order after the partition
    tied_kept = None
    if tie_break == "mergekit" and threshold > 0.0:
        above = int(torch.count_nonzero(buffer > threshold))
        if above + int(torch.count_nonzero(buffer == threshold)) > keep:
            # More entries tie at the threshold than fit: mergekit keeps those its argsort
            # ranks first, which depends on the whole tensor, so rank it the same way.
            fill(buffer)
            in_order = True
            ranked = torch.argsort(buffer, descending=True)[:keep]
            tied = ranked[buffer[ranked] == threshold]
            tied_kept = tied.sort().values
            del ranked, tied
    trim = MagnitudeTrim(threshold, tied_kept)
    if before is None:
        return trim
    if not in_order:
        fill(buffer)
    after = apply_magnitude_trim_(buffer, trim).sum()  # |δ| of the kept entries, zeros elsewhere
    if before < L1_EPS or after < L1_EPS:
        return trim
    return MagnitudeTrim(threshold, tied_kept, float(before / after))


def apply_magnitude_trim_(
    delta: torch.Tensor, trim: MagnitudeTrim, offset: int = 0
) -> torch.Tensor:
    """Trim `delta` in place as `trim` says. `delta` is the whole tensor, or a block of rows
    whose first entry sits at flat index `offset` of the whole tensor."""
    if trim.keeps_all:
        return delta
    scratch = torch.abs(delta)
    drop = None
    if trim.tied_kept is not None:
        tied = torch.nonzero(scratch.reshape(-1) == trim.threshold).squeeze(1)
        drop = tied[~torch.isin(tied + offset, trim.tied_kept.to(tied.device))]
    delta.mul_(scratch.ge_(trim.threshold))  # scratch now holds the 0/1 mask
    del scratch
    if drop is not None and drop.numel():
        delta.view(-1)[drop] = 0.0
    if trim.scale != 1.0:
        delta.mul_(trim.scale)
    return delta


def trim_by_magnitude_(
    delta: torch.Tensor,
    density: float,
    *,
    tie_break: str = "l2smerge",
    rescale: str = "none",
) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude, zero the rest, in
    place (two scratch buffers of |delta|'s size; no sort unless the mergekit rule meets
    surplus ties).

    With tie_break "l2smerge": keep = round(density * n) entries; every entry whose magnitude
    is at least the keep-th largest magnitude is kept (entries tied at the threshold are all
    kept). With "mergekit": exactly max(1, ⌊density·n⌋) entries, as mergekit keeps them.
    """
    flat = delta.reshape(-1)

    def fill(buffer: torch.Tensor) -> None:
        torch.abs(flat, out=buffer)

    trim = plan_magnitude_trim(
        fill, delta.numel(), density, tie_break=tie_break, rescale=rescale, device=delta.device
    )
    return apply_magnitude_trim_(delta, trim)


def trim_by_magnitude(delta: torch.Tensor, density: float, **rules: str) -> torch.Tensor:
    """trim_by_magnitude_ on a copy: the caller's tensor is left as it was."""
    return trim_by_magnitude_(delta.clone(), density, **rules)


# Above this many bytes of float32 |δ| a magnitude trim over row blocks keeps no whole-tensor
# buffer: a fresh buffer that size is page-faulted in for every tensor (it is beyond glibc's
# mmap threshold), which costs more than the selection, and it is a model's largest single
# allocation (a 7B embedding: 2.2 GB). Below it the buffer is reused from the heap.
STREAMED_TRIM_BYTES = 32 << 20
SAMPLE_GROUPS = 256  # groups of consecutive rows in the sample a streamed trim starts from
SAMPLE_SHARE = 32  # about one row in this many is sampled
MAX_MARGIN = 0.15  # widest window (share of entries on each side of the threshold) worth it
# Most of a tensor the sample may be: a tensor of few rows (fused experts, one per row) would
# otherwise be sampled whole, held three times over and read once more than by the buffer.
MAX_SAMPLE_SHARE = 1 / 8


def sample_row_groups(n_rows: int) -> list[tuple[int, int]]:
    """Evenly spaced groups of consecutive rows (start, stop) covering ~1/SAMPLE_SHARE of
    `n_rows`: a few positioned reads, not one per sampled row."""
    groups = min(SAMPLE_GROUPS, n_rows)
    size = max(1, n_rows // (SAMPLE_SHARE * groups))
    starts = sorted({i * n_rows // groups for i in range(groups)})
    return [(a, min(a + size, n_rows)) for a in starts]


def window_bounds(groups: list[torch.Tensor], share: float) -> tuple[float, float] | None:
    """(low, high): magnitudes between which the entry at rank `share` (from the top) of the
    whole tensor lies, with high confidence, judged from |δ| of sampled groups of rows. The
    window is four cluster-sampling standard errors wide on each side (the groups' own shares
    above the estimate vary as much as the tensor's rows do) plus 0.1%. high is inf when the
    window reaches the top. None when the window would hold more than 2·MAX_MARGIN of the
    entries, reach the bottom or hold zeros: the caller then keeps a whole-tensor buffer."""
    sample = torch.cat([g.reshape(-1).abs() for g in groups])  # on the CPU, as groups are
    n = sample.numel()
    if n == 0:
        return None

    def kth_largest(*ranks: int) -> list[float]:  # on one scratch copy, reordered each time
        positions = [n - r for r in ranks]
        work.partition(positions)
        return [float(work[p]) for p in positions]

    work = sample.numpy().copy()
    (estimate,) = kth_largest(min(n, max(1, round(share * n))))
    per_group = sample.split([g.numel() for g in groups])
    shares = torch.tensor([float((g >= estimate).float().mean()) for g in per_group])
    spread = float(shares.std()) if len(shares) > 1 else 0.5
    margin = 4.0 * spread / math.sqrt(len(shares)) + 1e-3
    if margin > MAX_MARGIN:
        return None
    low_rank = math.ceil((share + margin) * n)
    if low_rank >= n:
        return None
    high_rank = math.floor((share - margin) * n)
    if high_rank < 1:
        (low,), high = kth_largest(low_rank), math.inf
    else:
        low, high = kth_largest(low_rank, high_rank)
    if low <= 0.0:  # zeros in the window: it could hold most of the tensor
        return None
    return low, high


@dataclass(frozen=True)
class StreamedSelection:
    """What one streamed pass learns about the keep-th largest |δ|."""

    threshold: float
    greater: int  # entries with |δ| > threshold
    equal: int  # entries with |δ| == threshold


def streamed_threshold(
    blocks: Iterator[torch.Tensor], low: float, high: float, keep: int, limit: int
) -> StreamedSelection | None:
    """The keep-th largest |δ| of a task vector streamed in blocks, holding only the entries
    with low <= |δ| <= high (both ends in: stored weights are few-bit numbers, so magnitudes
    tie often) and a count of those > high. None when the keep-th largest is not in that
    window (the sample misled) or the window grows past `limit` entries."""
    # One buffer for the window, filled in order: only its filled pages are ever touched
    # (beyond the allocator's mmap threshold it is a fresh mapping). Keeping each block's
    # few selected entries as small tensors instead fragmented the heap between the blocks'
    # megabyte temporaries: +216 MB of peak memory on a 0.5B embedding for a 5 MB window.
    window = torch.empty(limit, dtype=torch.float32)
    above, held = 0, 0
    for block in blocks:
        # numpy, not torch: its boolean selection and counting on a CPU block of 1 MB take
        # 96 µs where torch's take 445 µs (one thread)
        flat = block.reshape(-1).numpy()
        magnitude = np.abs(flat, out=flat)
        if high != math.inf:
            above += int(np.count_nonzero(magnitude > high))
            if low == high:  # one magnitude tied by more entries than the window's share
                inside = magnitude[magnitude == low]
            else:
                inside = magnitude[(magnitude >= low) & (magnitude <= high)]
        else:
            inside = magnitude[magnitude >= low]
        if held + inside.size > limit:
            return None
        window[held : held + inside.size] = torch.from_numpy(inside)
        held += inside.size
        del flat, magnitude, inside
    rank = keep - above  # the keep-th largest overall is the rank-th largest of the window
    if not 0 < rank <= held:
        return None
    values = window[:held]
    threshold = float(kth_largest_(values, rank))
    greater = above + int(torch.count_nonzero(values > threshold))
    return StreamedSelection(threshold, greater, int(torch.count_nonzero(values == threshold)))


def _streamed_trim(
    blocks: Callable[[], Iterator[torch.Tensor]],
    sample: Callable[[], list[torch.Tensor]],
    numel: int,
    keep: int,
    tie_break: str,
) -> MagnitudeTrim | None:
    """A magnitude trim decided in one streamed pass (see magnitude_trims), or None where
    that cannot decide it exactly."""
    bounds = window_bounds(sample(), keep / numel)
    if bounds is None:
        return None
    low, high = bounds
    # the window holds about 2·margin of the entries (0.3 at most, see window_bounds); more
    # means the sample misled, and the buffer is cheaper than going on
    selection = streamed_threshold(blocks(), low, high, keep, int(numel * (3 * MAX_MARGIN)))
    if selection is None:
        return None
    if tie_break == "mergekit" and selection.greater + selection.equal > keep:
        return None  # surplus ties at the threshold: mergekit's argsort order needs the whole
    return MagnitudeTrim(selection.threshold)


def magnitude_trims(
    task_vector_blocks: Callable[[int], Iterator[torch.Tensor]],
    n_models: int,
    numel: int,
    densities: list[float],
    *,
    tie_break: str = "l2smerge",
    rescale: str = "none",
    task_vector_rows: Callable[[int, int, int], torch.Tensor] | None = None,
    rows: int = 0,
) -> list[MagnitudeTrim]:
    """Each model's trim (as trim_by_magnitude_ decides it), from its task vector streamed in
    blocks of rows: one float32 buffer of |δk|, reused for every model, instead of the inputs,
    the task vector and |δk| all held at once.

    A tensor over STREAMED_TRIM_BYTES whose `rows` rows can be read by `task_vector_rows(k,
    start, stop)` keeps no such buffer: a sample of rows bounds a window of magnitudes around
    the threshold, one pass counts the entries above it and keeps those inside, and the
    threshold is selected among them: the same threshold, exactly (for finite task vectors:
    the executor checks them first). Where that cannot decide it (the sample misled, l1
    rescaling, mergekit's rule meeting surplus ties, too few rows for a small sample) the
    buffer is used after all."""
    buffer: torch.Tensor | None = None
    trims = []
    streamable = (
        task_vector_rows is not None
        and rows > 0
        and rescale == "none"
        and numel * 4 > STREAMED_TRIM_BYTES
        and sum(b - a for a, b in sample_row_groups(rows)) <= MAX_SAMPLE_SHARE * rows
    )
    for k in range(n_models):
        keep = keep_count(densities[k], numel, tie_break)
        if streamable and 0 < keep < numel:
            assert task_vector_rows is not None

            def sample(k: int = k) -> list[torch.Tensor]:
                return [task_vector_rows(k, a, b) for a, b in sample_row_groups(rows)]

            trim = _streamed_trim(lambda k=k: task_vector_blocks(k), sample, numel, keep, tie_break)
            if trim is not None:
                trims.append(trim)
                continue

        def fill(out: torch.Tensor, k: int = k) -> None:
            filled = 0
            for block in task_vector_blocks(k):
                n = block.numel()
                torch.abs(block.reshape(-1), out=out[filled : filled + n])
                filled += n
            assert filled == numel, (filled, numel)

        if buffer is None and 0 < keep < numel:
            buffer = torch.empty(numel, dtype=torch.float32)
        trims.append(
            plan_magnitude_trim(
                fill, numel, densities[k], tie_break=tie_break, rescale=rescale, buffer=buffer
            )
        )
    return trims


def drop_random_(
    delta: torch.Tensor,
    drop_rate: float,
    generator: torch.Generator | None,
    *,
    rescale: str = "inverse",
) -> torch.Tensor:
    """DARE, in place: drop each entry with probability `drop_rate`, rescale the survivors
    ("inverse": by 1/(1 - p); "l1": to the tensor's L1 norm before the drop; "none").

    Random numbers are drawn on the generator's device (CPU by default) so a merge gives the
    same result on CPU and GPU.
    """
    check_choice("rescale", rescale, ("inverse", "l1", "none"))
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    if drop_rate == 0.0:
        return delta
    device = generator.device if generator is not None else torch.device("cpu")
    keep = torch.rand(delta.shape, generator=generator, device=device).ge_(drop_rate)
    before = delta.abs().sum() if rescale == "l1" else None
    delta.mul_(keep.to(delta.device))
    del keep
    if rescale == "inverse":
        return delta.div_(1.0 - drop_rate)
    if before is not None:
        after = delta.abs().sum()
        if before >= L1_EPS and after >= L1_EPS:
            delta.mul_(float(before / after))
    return delta


def drop_random(
    delta: torch.Tensor,
    drop_rate: float,
    generator: torch.Generator | None,
    *,
    rescale: str = "inverse",
) -> torch.Tensor:
    """drop_random_ on a copy: the caller's tensor is left as it was."""
    return drop_random_(delta.clone(), drop_rate, generator, rescale=rescale)


def elect_sign(deltas: list[torch.Tensor], *, tie_break: str = "l2smerge") -> torch.Tensor:
    """Per entry, the sign of the summed deltas: +1 or -1; where they cancel exactly, 0
    ("l2smerge") or +1 ("mergekit")."""
    total = deltas[0].clone()
    for d in deltas[1:]:
        total.add_(d)
    if tie_break == "mergekit":
        return total.ge_(0).mul_(2).sub_(1)
    return total.sign_()


def _keep_agreeing_(deltas: list[torch.Tensor], sign: torch.Tensor, weights: list[float] | None):
    """Zero the entries of each delta that do not agree with `sign` (in place); return the
    per-entry divisor: the count of agreeing deltas (uint8), or with `weights` the summed
    weights of the agreeing models (float32)."""
    if weights is None:
        divisor = torch.zeros(sign.shape, dtype=torch.uint8, device=sign.device)
    else:
        divisor = torch.zeros(sign.shape, dtype=torch.float32, device=sign.device)
    for i, d in enumerate(deltas):
        agrees = torch.mul(d, sign).gt_(0)  # sign(d) == sign and d != 0
        d.mul_(agrees)
        if weights is None:
            divisor.add_(agrees.to(torch.uint8))
        else:
            divisor.add_(agrees, alpha=weights[i])
        del agrees
    return divisor


def disjoint_sum_(deltas: list[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """Per entry, the sum of the non-zero deltas whose sign agrees with `sign` (mergekit's
    consensus without `normalize`). Consumes `deltas`; the result is in `deltas[0]`'s memory."""
    total = deltas[0]
    for i, d in enumerate(deltas):
        d.mul_(torch.mul(d, sign).gt_(0))
        if i:
            total.add_(d)
    return total


def disjoint_mean_(
    deltas: list[torch.Tensor], sign: torch.Tensor, weights: list[float] | None = None
) -> torch.Tensor:
    """Per entry, the sum of the non-zero deltas whose sign agrees with `sign`, divided by
    their count (0 if none), or with `weights` by the summed weights of the agreeing models
    (mergekit's `normalize`; a divisor of exactly 0 counts as 1).

    Consumes `deltas` (they are masked in place) and returns the mean in `deltas[0]`'s memory.
    """
    if len(deltas) == 1 and weights is None:  # a lone delta always agrees with its own sign
        return deltas[0].mul_(sign.ne(0))
    divisor = _keep_agreeing_(deltas, sign, weights)
    total = deltas[0]
    for d in deltas[1:]:
        total.add_(d)
    if weights is None:
        return total.div_(divisor.clamp_(min=1))
    return total.div_(divisor.masked_fill_(divisor == 0, 1.0))


def disjoint_mean(
    deltas: list[torch.Tensor], sign: torch.Tensor, weights: list[float] | None = None
) -> torch.Tensor:
    """disjoint_mean_ on copies: the caller's deltas are left as they were."""
    return disjoint_mean_([d.clone() for d in deltas], sign, weights)
