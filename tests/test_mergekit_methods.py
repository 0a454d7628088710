"""The method pieces that carry mergekit's semantics, against direct computations."""

from __future__ import annotations

import pytest
import torch

from l2smerge.methods.sparsify import (
    apply_magnitude_trim_,
    disjoint_mean,
    drop_random,
    elect_sign,
    keep_count,
    magnitude_trims,
    trim_by_magnitude,
)
from l2smerge.methods.task_vector import average, task_arithmetic, ties


def argsort_top_k(delta: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit's sparsify.magnitude on CPU: the first k of torch.argsort(|δ|, descending)."""
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel())
    mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
    return delta * mask.reshape(delta.shape)


def tied_delta(n: int, seed: int) -> torch.Tensor:
    """A task vector with few distinct magnitudes: many entries tie at any threshold."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-6, 7, (n,), generator=g).float() * 0.01


@pytest.mark.parametrize("n", [10, 1000, 20_000])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
def test_mergekit_trim_keeps_exactly_argsorts_top_k(n, density):
    delta = tied_delta(n, seed=n)
    got = trim_by_magnitude(delta, density, tie_break="mergekit")
    assert torch.equal(got, argsort_top_k(delta, density))
    assert int((got != 0).sum()) <= keep_count(density, n, "mergekit")
    if n >= 1000:  # l2smerge's rule keeps every tied entry: more than k here
        assert int((trim_by_magnitude(delta, density) != 0).sum()) > int((got != 0).sum())


def test_keep_counts_of_both_rules():
    assert keep_count(0.2, 12, "l2smerge") == 2 and keep_count(0.2, 12, "mergekit") == 2
    assert keep_count(0.25, 10, "l2smerge") == 2 and keep_count(0.29, 10, "mergekit") == 2
    assert keep_count(0.01, 10, "mergekit") == 1  # at least one entry
    assert keep_count(0.0, 10, "mergekit") == 0 and keep_count(1.0, 10, "mergekit") == 10


def test_l1_rescale_keeps_the_tensors_l1_norm():
    delta = torch.randn(500, generator=torch.Generator().manual_seed(0))
    got = trim_by_magnitude(delta, 0.3, tie_break="mergekit", rescale="l1")
    assert torch.isclose(got.abs().sum(), delta.abs().sum(), rtol=1e-6)
    assert int((got != 0).sum()) == 150


def test_blockwise_trims_equal_the_whole_tensors():
    delta = tied_delta(40 * 25, seed=3).reshape(40, 25)
    for rule, rescale in (("mergekit", "l1"), ("mergekit", "none"), ("l2smerge", "l1")):
        whole = trim_by_magnitude(delta, 0.3, tie_break=rule, rescale=rescale)

        def blocks(_k):
            for start in range(0, 40, 7):
                yield delta[start : start + 7]

        (trim,) = magnitude_trims(blocks, 1, delta.numel(), [0.3], tie_break=rule, rescale=rescale)
        parts = [
            apply_magnitude_trim_(delta[s : s + 7].clone(), trim, s * 25) for s in range(0, 40, 7)
        ]
        assert torch.equal(torch.cat(parts), whole), (rule, rescale)


def test_sign_election_on_an_exact_cancellation():
    a, b = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0])
    assert torch.equal(elect_sign([a, b]), torch.tensor([0.0, -1.0, 0.0]))
    assert torch.equal(elect_sign([a, b], tie_break="mergekit"), torch.tensor([1.0, -1.0, 1.0]))


def test_disjoint_mean_divides_by_the_agreeing_weights():
    a, b = torch.tensor([0.6, 0.6, -0.6]), torch.tensor([0.2, -0.2, -0.2])  # weighted already
    sign = elect_sign([a, b])
    got = disjoint_mean([a, b], sign, [0.6, 0.2])
    assert torch.allclose(got, torch.tensor([0.8 / 0.8, 0.6 / 0.6, -0.8 / 0.8]))


def test_drop_random_rescale_modes():
    delta = torch.randn(20_000, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    kept = drop_random(delta, 0.4, gen, rescale="none")
    assert abs(float((kept != 0).float().mean()) - 0.6) < 0.02
    assert torch.equal(kept[kept != 0], delta[kept != 0])
    l1 = drop_random(delta, 0.4, torch.Generator().manual_seed(2), rescale="l1")
    assert torch.isclose(l1.abs().sum(), delta.abs().sum(), rtol=1e-5)
    assert torch.equal(l1 != 0, kept != 0)


def test_weights_and_normalize_in_the_linear_methods():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(6, 5, generator=g)
    models = [base + torch.randn(6, 5, generator=g) for _ in range(2)]
    assert torch.allclose(
        average(models, None, weight=[1.0, 3.0]), (models[0] + 3 * models[1]) / 4, atol=1e-6
    )
    assert torch.allclose(
        average(models, None, weight=[1.0, 3.0], normalize=False), models[0] + 3 * models[1]
    )
    deltas = [m - base for m in models]
    got = task_arithmetic(models, base, alpha=0.5, weight=[1.0, 3.0], normalize=True)
    assert torch.allclose(got, base + 0.5 * (deltas[0] + 3 * deltas[1]) / 4, atol=1e-6)
    with pytest.raises(ValueError, match="sum to 0"):
        average(models, None, weight=[1.0, -1.0])


def test_ties_rejects_unknown_rules():
    base = torch.zeros(4)
    with pytest.raises(ValueError, match="tie_break"):
        ties([base + 1], base, tie_break="nearest")
    with pytest.raises(ValueError, match="rescale"):
        ties([base + 1], base, rescale="inverse")
    with pytest.raises(ValueError, match="normalize"):
        ties([base + 1], base, normalize="yes")
