import math

import numpy as np
import pytest

from l2smerge.choose.stats import (
    mcnemar_exact,
    paired_difference_interval,
    sign_flip_p_value,
    stratified_bootstrap,
)
from l2smerge.eval.metrics import Z95, macro_interval, wilson_interval


def test_wilson_known_value():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_mcnemar_exact_matches_binomial_by_hand():
    # 1 vs 9 discordant pairs: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # large counts stay finite and tiny
    assert 0 < mcnemar_exact(100, 300) < 1e-20


def test_bootstrap_interval_contains_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 1.0, 400)
    ci = stratified_bootstrap([[x]], lambda s: s[0][0].mean(axis=-1), seed=3, resamples=500)
    assert ci[0] < x.mean() < ci[1]
    assert ci[1] - ci[0] == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.25)
    again = stratified_bootstrap([[x]], lambda s: s[0][0].mean(axis=-1), seed=3, resamples=500)
    assert ci == again


def test_sign_flip_agrees_with_mcnemar_on_one_benchmark():
    diffs = np.array([1.0] * 9 + [-1.0] * 1 + [0.0] * 40)
    p = sign_flip_p_value([diffs], resamples=20000, seed=0)
    assert p == pytest.approx(mcnemar_exact(1, 9), abs=0.006)
    assert sign_flip_p_value([np.zeros(10)]) == 1.0


def test_sign_flip_general_differences_match_the_binary_shortcut():
    binary = np.array([1.0] * 12 + [-1.0] * 4 + [0.0] * 30)
    p_binary = sign_flip_p_value([binary], resamples=20000, seed=1)
    p_scaled = sign_flip_p_value([binary * 2.5], resamples=20000, seed=1)  # matrix path
    assert p_scaled == pytest.approx(p_binary, abs=0.01)
    assert p_binary == pytest.approx(mcnemar_exact(4, 12), abs=0.01)


def test_tango_paired_interval_known_values_and_boundaries():
    # Fagerland, Lydersen & Laake (2014), airway hyper-responsiveness (Bentur et al. 2009):
    # n12 = 1, n21 = 7, N = 21 -> Tango's score interval -0.517 to -0.026
    lo, hi = paired_difference_interval(gained=1, lost=7, n=21)
    assert (lo, hi) == pytest.approx((-0.5172, -0.0260), abs=1e-4)
    # no discordant item: +-z^2/(n+z^2) whatever the accuracies (never the bootstrap's [0, 0])
    for n in (5, 10, 200):
        half = Z95**2 / (n + Z95**2)
        assert paired_difference_interval(0, 0, n) == pytest.approx((-half, half))
    # the cases: 5 items, 4 lost (-80 points); 2 items, 1 lost (-50 points)
    assert paired_difference_interval(0, 4, 5)[0] == pytest.approx(-0.9638, abs=1e-4)
    assert paired_difference_interval(0, 1, 2) == pytest.approx((-0.9055, 0.4864), abs=1e-4)
    # every item lost / gained: the bound at -1 / +1; mirror images; no data: everything
    assert paired_difference_interval(0, 5, 5)[0] == -1.0
    assert paired_difference_interval(5, 0, 5)[1] == 1.0
    a, b = paired_difference_interval(3, 9, 40), paired_difference_interval(9, 3, 40)
    assert a == pytest.approx((-b[1], -b[0]))
    assert paired_difference_interval(0, 0, 0) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        paired_difference_interval(3, 3, 5)


def test_macro_interval_of_paired_deltas():
    one = paired_difference_interval(2, 6, 50)
    assert macro_interval([-4 / 50], [one]) == pytest.approx(one)
    tie = paired_difference_interval(0, 0, 50)
    lo, hi = macro_interval([-4 / 50, 0.0], [one, tie])
    assert lo == pytest.approx(-2 / 50 - math.hypot(-4 / 50 - one[0], tie[1]) / 2)
    assert hi == pytest.approx(-2 / 50 + math.hypot(one[1] + 4 / 50, tie[1]) / 2)
