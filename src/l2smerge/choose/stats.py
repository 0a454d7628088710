"""Small, exact statistics for comparing two runs item by item: Tango's paired score interval
for an accuracy difference, exact McNemar, paired and stratified bootstraps (for token ratios),
and a sign-flip test for a macro average. numpy only, always seeded. Per-group figures and
the Wilson interval live in l2smerge.eval.metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from l2smerge.eval.metrics import Z95

DEFAULT_RESAMPLES = 2000


def paired_difference_interval(gained: int, lost: int, n: int) -> tuple[float, float]:
    """95% Tango score interval (Tango 1998, Stat Med 17:891) for the difference of two
    accuracies measured on the same n items, delta = acc(B) − acc(A) = (gained − lost) / n,
    where `gained` items are right in B only and `lost` right in A only.

    The interval is {d : |T(d)| <= z} for the score statistic
        T(d) = (gained − lost − n·d) / sqrt(n·(2·q(d) + d·(1 − d))),
    q(d) the maximum-likelihood share of "lost" items under delta = d. Unlike a bootstrap it
    never collapses to a point: with no discordant item it is ±z²/(n + z²), the uncertainty
    that n agreeing items leave (n = 5: ±0.43; n = 200: ±0.019). Fagerland, Lydersen & Laake
    (2014) recommend it for paired proportions for its coverage at small n."""
    if n <= 0:
        return (-1.0, 1.0)
    if gained < 0 or lost < 0 or gained + lost > n:
        raise ValueError(f"need 0 <= gained + lost <= n, got {gained} + {lost} > {n}")
    estimate = (gained - lost) / n

    def score(d: float) -> float:
        a = 2.0 * n
        b = -gained - lost + (2.0 * n - gained + lost) * d
        c = -lost * d * (1.0 - d)
        q = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)
        var = n * (2 * q + d * (1 - d))
        num = gained - lost - n * d
        if var <= 0:
            return math.copysign(math.inf, num) if num else 0.0
        return num / math.sqrt(var)

    def solve(target: float, low: float, high: float) -> float:
        # T decreases in d; bisect for T(d) = target on [low, high].
        for _ in range(60):
            mid = (low + high) / 2
            if score(mid) > target:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    lower = -1.0 if estimate == -1 else solve(Z95, -1.0, estimate)
    upper = 1.0 if estimate == 1 else solve(-Z95, estimate, 1.0)
    return (lower, upper)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs (right in one run only) are
    Binomial(a_only + b_only, 1/2) under "no difference"."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    # P(X <= k) for X ~ Bin(n, 1/2), summed in log space to stay exact for large n.
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(k + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


def _groups(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float) for v in values]


def stratified_bootstrap(
    strata: Sequence[Sequence[np.ndarray]],
    statistic,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of `statistic` under a paired, stratified bootstrap.

    `strata` is a list (one per benchmark) of equally long paired arrays, e.g. [correct_a,
    correct_b]; items are resampled with replacement inside each stratum, keeping pairs
    together. Vectorised: `statistic(sample)` gets the same nested shape with each array
    turned into a (draws, n) matrix, one resample per row, and returns one value per row
    (nan where undefined, e.g. a ratio over zero; those draws are ignored). Reduce along
    axis=-1."""
    rng = np.random.default_rng(seed)
    strata = [_groups(arrays) for arrays in strata]
    largest = max((len(arrays[0]) for arrays in strata), default=1)
    chunk = max(1, min(resamples, 2_000_000 // max(1, largest)))  # bounded memory
    draws = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        sample = []
        for arrays in strata:
            n = len(arrays[0])
            idx = rng.integers(0, n, size=(size, n)) if n else np.zeros((size, 0), dtype=int)
            sample.append([a[idx] for a in arrays])
        draws.append(np.asarray(statistic(sample), dtype=float).reshape(size))
    values = np.concatenate(draws)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def sign_flip_p_value(
    differences: Sequence[np.ndarray],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided paired permutation p-value for a macro mean of per-item differences.

    `differences` holds one array per benchmark (b − a per shared item). Under "the two runs
    are exchangeable", each item's difference is as likely to be flipped in sign; the
    statistic is the mean over benchmarks of the per-benchmark mean difference. With one
    benchmark and 0/1 verdicts this is a Monte Carlo McNemar test."""
    diffs = [np.asarray(d, dtype=float) for d in differences if len(d)]
    if not diffs:
        return 1.0
    observed = abs(float(np.mean([d.mean() for d in diffs])))
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    macro = np.zeros(resamples)
    for d in diffs:
        nonzero = d[d != 0]  # zero differences do not change under a sign flip
        if np.all(np.abs(nonzero) == 1):
            # ±1 differences (right/wrong verdicts): the flipped sum is 2·Bin(k, ½) − k.
            k = nonzero.size
            flipped_sum = 2.0 * rng.binomial(k, 0.5, size=resamples) - k
        else:
            flipped_sum = np.concatenate(
                [
                    (rng.integers(0, 2, size=(m, nonzero.size)) * 2.0 - 1.0) @ nonzero
                    for m in _chunks(resamples, max(1, 2_000_000 // max(1, nonzero.size)))
                ]
            )
        macro += flipped_sum / d.size
    macro /= len(diffs)
    hits = int(np.sum(np.abs(macro) >= observed - 1e-12))
    # +1 so the estimate is never exactly 0 (the observed labelling is one permutation).
    return (hits + 1) / (resamples + 1)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]
