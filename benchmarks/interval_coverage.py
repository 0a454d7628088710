"""Coverage of the accuracy-delta interval the sweep's selection rule uses, against the
percentile bootstrap it replaced.

For paired verdicts drawn from known cell probabilities, how often does the lower end of the
95% interval (a one-sided 97.5% bound) lie below the true difference? A rule that selects on
that bound needs it to hold at small n and near 100% accuracy. Prints one row per case:

    python benchmarks/interval_coverage.py [--trials 2000] [--resamples 1000]
"""

from __future__ import annotations

import argparse

import numpy as np

from l2smerge.choose.stats import paired_difference_interval
from l2smerge.eval.metrics import macro_interval

# (reference accuracy, point accuracy, extra discordance on both sides)
CASES = [
    (1.00, 0.95, 0.00),
    (0.90, 0.85, 0.02),
    (0.60, 0.55, 0.10),
    (0.50, 0.50, 0.10),
    (0.95, 0.95, 0.02),
]


def cells(ref: float, point: float, extra: float) -> np.ndarray:
    """Probabilities of (both right, reference only, point only, both wrong)."""
    lost = max(0.0, ref - point) + extra
    gained = max(0.0, point - ref) + extra
    both = ref - lost
    return np.array([both, lost, gained, 1 - both - lost - gained])


def lower_bounds(counts: np.ndarray, rng, resamples: int) -> tuple[float, float]:
    """(Tango lower bound, bootstrap 2.5th percentile) for one sample's cell counts."""
    both, lost, gained, neither = (int(c) for c in counts)
    n = both + lost + gained + neither
    tango = paired_difference_interval(gained, lost, n)[0]
    diffs = np.array([0.0] * (both + neither) + [-1.0] * lost + [1.0] * gained)
    boot = diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    return tango, float(np.percentile(boot, 2.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        "one benchmark: share of samples whose lower bound is below the true delta (target 0.975)"
    )
    for n in (5, 10, 30, 100):
        for ref, point, extra in CASES:
            probs, true = cells(ref, point, extra), point - ref
            hits = np.zeros(2)
            for counts in rng.multinomial(n, probs, size=args.trials):
                bounds = lower_bounds(counts, rng, args.resamples)
                hits += [true >= b - 1e-12 for b in bounds]
            tango, boot = hits / args.trials
            print(
                f"n={n:4d} reference {ref:.2f} point {point:.2f} extra {extra:.2f}: "
                f"Tango {tango:.3f}  bootstrap {boot:.3f}"
            )
    print("macro over 3 benchmarks (n = 10, 30, 100), Tango per benchmark + MOVER")
    for ref, point, extra in CASES:
        probs, true = cells(ref, point, extra), point - ref
        hits = 0
        for _ in range(args.trials):
            deltas, intervals = [], []
            for n in (10, 30, 100):
                both, lost, gained, _ = rng.multinomial(n, probs)
                deltas.append((gained - lost) / n)
                intervals.append(paired_difference_interval(int(gained), int(lost), n))
            hits += true >= macro_interval(deltas, intervals)[0] - 1e-12
        print(f"reference {ref:.2f} point {point:.2f} extra {extra:.2f}: {hits / args.trials:.3f}")


if __name__ == "__main__":
    main()
