"""Task-vector methods against direct, deliberately naive computations."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import naive_ties, naive_trim

from l2smerge.methods import METHODS
from l2smerge.methods.sparsify import (
    disjoint_mean,
    drop_random,
    elect_sign,
    magnitude_threshold,
    trim_by_magnitude,
)
from l2smerge.methods.task_vector import average, dare_ta, dare_ties, task_arithmetic, ties


@pytest.fixture
def trio():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(24, 16, generator=g)
    models = [base + 0.1 * torch.randn(24, 16, generator=g) for _ in range(3)]
    return base, models


def test_registry_lists_the_task_vector_methods():
    for name in ("average", "task_arithmetic", "ties", "dare_ta", "dare_ties"):
        assert name in METHODS
    assert METHODS["ties"].params == {
        "alpha": 1.0,
        "density": 0.2,
        # mergekit's semantics (docs/merge.md), off by default
        "weight": 1.0,
        "normalize": True,
        "rescale": "none",
        "tie_break": "l2smerge",
    }
    assert METHODS["average"].needs_base is False
    assert METHODS["dare_ties"].context == frozenset({"generator"})


def test_average_is_the_mean_of_the_models(trio):
    base, models = trio
    assert torch.allclose(average(models, None), torch.stack(models).mean(0), atol=1e-6)


def test_task_arithmetic_scalar_and_per_model(trio):
    base, models = trio
    expected = base + 0.7 * sum(m - base for m in models)
    assert torch.allclose(task_arithmetic(models, base, alpha=0.7), expected, atol=1e-5)
    expected = base + 0.2 * (models[0] - base) + 0.5 * (models[1] - base) - (models[2] - base)
    got = task_arithmetic(models, base, alpha=[0.2, 0.5, -1.0])
    assert torch.allclose(got, expected, atol=1e-5)


def test_task_arithmetic_rejects_wrong_number_of_alphas(trio):
    base, models = trio
    with pytest.raises(ValueError, match="2 values for 3 models"):
        task_arithmetic(models, base, alpha=[0.5, 0.5])


@pytest.mark.parametrize("density", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_trim_by_magnitude_matches_a_full_sort(density):
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    got = trim_by_magnitude(delta, density)
    assert torch.equal(got, naive_trim(delta, density))
    assert int((got != 0).sum()) == round(density * 1000)


def test_magnitude_threshold_is_the_kth_largest():
    delta = torch.tensor([0.5, -3.0, 2.0, -0.1, 1.0])
    assert magnitude_threshold(delta, 1) == 3.0
    assert magnitude_threshold(delta, 3) == 1.0
    assert magnitude_threshold(delta, 5) == 0.1
    assert torch.equal(delta, torch.tensor([0.5, -3.0, 2.0, -0.1, 1.0]))  # input untouched


def test_trim_keeps_ties_at_the_threshold():
    delta = torch.tensor([1.0, -1.0, 1.0, 0.5])
    assert torch.equal(trim_by_magnitude(delta, 0.25), torch.tensor([1.0, -1.0, 1.0, 0.0]))


def test_elect_sign_and_disjoint_mean_by_hand():
    a = torch.tensor([1.0, -2.0, 3.0, 0.0, 1.0])
    b = torch.tensor([3.0, 1.0, -1.0, 0.0, -1.0])
    sign = elect_sign([a, b])
    assert torch.equal(sign, torch.tensor([1.0, -1.0, 1.0, 0.0, 0.0]))
    assert torch.equal(disjoint_mean([a, b], sign), torch.tensor([2.0, -2.0, 3.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("alpha", "density"), [(1.0, 0.2), (0.5, 0.8), ([1.0, 0.3, 0.6], [0.2, 0.5, 1.0])]
)
def test_ties_matches_the_naive_computation(trio, alpha, density):
    base, models = trio
    n = len(models)
    alphas = alpha if isinstance(alpha, list) else [alpha] * n
    densities = density if isinstance(density, list) else [density] * n
    got = ties(models, base, alpha=alpha, density=density)
    assert torch.allclose(got, naive_ties(models, base, alphas, densities), atol=1e-6)


def test_ties_does_not_modify_its_inputs(trio):
    base, models = trio
    copies = [m.clone() for m in models]
    ties(models, base, alpha=0.5, density=0.3)
    assert all(torch.equal(a, b) for a, b in zip(models, copies, strict=True))


def test_drop_random_drops_p_and_rescales():
    delta = torch.ones(100_000)
    g = torch.Generator().manual_seed(3)
    out = drop_random(delta, 0.3, g)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    again = drop_random(delta, 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_drop_random_rejects_rates_outside_0_1(p):
    with pytest.raises(ValueError, match="drop_rate"):
        drop_random(torch.ones(3), p, None)


def test_dare_ta_is_ta_on_dropped_deltas(trio):
    base, models = trio
    got = dare_ta(
        models, base, alpha=0.7, drop_rate=0.3, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    expected = base.clone()
    for m in models:
        keep = torch.rand(m.shape, generator=g) >= 0.3
        expected += 0.7 * (m - base) * keep / 0.7
    assert torch.allclose(got, expected, atol=1e-5)


def test_dare_ties_is_ties_consensus_on_dropped_deltas(trio):
    base, models = trio
    got = dare_ties(
        models,
        base,
        alpha=1.0,
        drop_rate=0.4,
        density=0.5,
        generator=torch.Generator().manual_seed(7),
    )
    g = torch.Generator().manual_seed(7)
    dropped = []
    for m in models:
        keep = torch.rand(m.shape, generator=g) >= 0.4
        dropped.append(base + (m - base) * keep / 0.6)
    expected = naive_ties(dropped, base, [1.0] * 3, [0.5] * 3)
    assert torch.allclose(got, expected, atol=1e-5)


def test_dare_with_zero_drop_rate_equals_ta_and_ties(trio):
    base, models = trio
    assert torch.allclose(
        dare_ta(models, base, alpha=0.7, drop_rate=0.0), task_arithmetic(models, base, alpha=0.7)
    )
    assert torch.allclose(
        dare_ties(models, base, alpha=1.0, drop_rate=0.0, density=0.2),
        ties(models, base, alpha=1.0, density=0.2),
    )
