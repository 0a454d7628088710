import pytest
import torch

from l2smerge.methods import get_method
from l2smerge.methods.svd import lore, lore_estimate, truncate_rank, twin
from l2smerge.util.errors import L2SError


def _models(k: int, shape=(24, 16), seed: int = 0, delta_rank: int = 3):
    """k tensors = a shared base + a low-rank delta each + small noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    out = []
    for _ in range(k):
        a = torch.randn(shape[0], delta_rank, generator=g)
        b = torch.randn(delta_rank, shape[1], generator=g)
        out.append(base + 0.3 * a @ b + 0.001 * torch.randn(shape, generator=g))
    return base, out


def test_registered_with_their_parameters():
    assert get_method("lore").needs_base is False
    assert set(get_method("lore").params) == {"alpha", "rank", "threshold", "iterations"}
    assert get_method("twin").needs_base is True
    assert get_method("twin").params == {"alpha": 0.7, "rank": 64}


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_lore_deltas_have_the_requested_rank(rank):
    _, tensors = _models(3)
    est = lore_estimate(tensors, rank=rank, iterations=20)
    for delta in est.deltas:
        assert int(torch.linalg.matrix_rank(delta, atol=1e-4)) == rank


def test_lore_threshold_mode_is_low_rank_and_shrinks_with_the_threshold():
    _, tensors = _models(3)
    ranks = []
    for threshold in (0.01, 0.2, 0.6):
        est = lore_estimate(tensors, threshold=threshold, iterations=20)
        ranks.append(max(int(torch.linalg.matrix_rank(d, atol=1e-4)) for d in est.deltas))
    assert ranks[0] >= ranks[1] >= ranks[2]
    assert ranks[1] < 16  # thresholding really cut the rank


def test_lore_estimate_converges():
    _, tensors = _models(3)
    est = lore_estimate(tensors, rank=3, iterations=200, tolerance=1e-7)
    assert est.changes[-1] < 1e-7
    assert len(est.changes) < 200  # stopped early at the tolerance
    # the objective's fixed point: θ0' is the mean of θk − δk for the final δk
    fixed = torch.stack([t - d for t, d in zip(tensors, est.deltas, strict=True)]).mean(0)
    assert torch.allclose(est.base, fixed, atol=1e-4)


def test_lore_recovers_low_rank_structure():
    base, tensors = _models(3, delta_rank=2)
    est = lore_estimate(tensors, rank=2, iterations=200)
    for t, d in zip(tensors, est.deltas, strict=True):
        # each model is explained by the common estimate plus its rank-2 delta
        assert (t - est.base - d).norm() / t.norm() < 0.05


def test_lore_merge_and_1d_rule():
    _, tensors = _models(2)
    merged = lore(tensors, None, alpha=0.5, rank=2, iterations=5)
    est = lore_estimate(tensors, rank=2, iterations=5)
    assert torch.allclose(merged, est.base + 0.5 * (est.deltas[0] + est.deltas[1]))
    vecs = [torch.randn(7), torch.randn(7)]
    assert torch.allclose(lore(vecs, None), (vecs[0] + vecs[1]) / 2)
    with pytest.raises(L2SError, match="lore"):
        lore(tensors, None, rank=-1)


def test_twin_full_rank_is_shared_plus_mean_exclusive():
    base, tensors = _models(2)
    alpha = 0.7
    shared = base + alpha * sum(t - base for t in tensors)
    expected = shared + sum(t - shared for t in tensors) / len(tensors)
    merged = twin(tensors, base, alpha=alpha, rank=16)
    assert torch.allclose(merged, expected, atol=1e-5)
    # ... which is the plain mean of the models, whatever α
    assert torch.allclose(merged, (tensors[0] + tensors[1]) / 2, atol=1e-5)


def test_twin_low_rank_adds_back_truncated_exclusive_parts():
    base, tensors = _models(2)
    shared = base + 0.7 * sum(t - base for t in tensors)
    expected = shared + sum(truncate_rank(t - shared, 2) for t in tensors) / 2
    merged = twin(tensors, base, alpha=0.7, rank=2)
    assert torch.allclose(merged, expected, atol=1e-5)
    assert not torch.allclose(merged, (tensors[0] + tensors[1]) / 2, atol=1e-3)
    with pytest.raises(L2SError, match="rank"):
        twin(tensors, base, rank=0)


def test_twin_1d_keeps_exclusive_whole():
    base = torch.zeros(5)
    tensors = [torch.ones(5), 3 * torch.ones(5)]
    assert torch.allclose(twin(tensors, base, rank=1), 2 * torch.ones(5))


def test_truncate_rank_is_eckart_young():
    m = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    r2 = truncate_rank(m, 2)
    s = torch.linalg.svdvals(m)
    assert torch.isclose((m - r2).norm(), s[2:].norm(), atol=1e-5)
    assert torch.equal(truncate_rank(m, 6), m)


def test_small_rank_truncation_is_randomized_but_near_optimal_and_deterministic():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(200, 150, generator=g)  # a flat spectrum: the hardest case
    approx = truncate_rank(m, 5)  # 2 * (5 + 10) <= 150: the randomized path
    assert int(torch.linalg.matrix_rank(approx, atol=1e-4)) == 5
    optimal = torch.linalg.svdvals(m)[5:].norm()
    assert optimal <= (m - approx).norm() <= 1.01 * optimal
    assert torch.equal(approx, truncate_rank(m, 5))


# -- LoRE: without a base two models are their mean; with a base, low-rank task vectors ------


@pytest.mark.parametrize("rank", [0, 1, 3])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.7])
def test_two_model_lore_without_a_base_is_exactly_the_mean(rank, alpha):
    _, tensors = _models(2)
    mean = (tensors[0] + tensors[1]) / 2
    assert torch.equal(lore(tensors, None, alpha=alpha, rank=rank), mean)
    # not a shortcut that hides a different answer: the estimate itself gives the mean
    est = lore_estimate(tensors, rank=rank, iterations=5)
    assert torch.allclose(est.base, mean, atol=1e-5)
    assert torch.allclose(est.base + alpha * (est.deltas[0] + est.deltas[1]), mean, atol=1e-4)
    assert torch.equal(lore(tensors[:1], None, alpha=alpha, rank=rank), tensors[0])


def test_lore_with_a_base_estimates_low_rank_task_vectors_relative_to_it():
    base, tensors = _models(2, delta_rank=2)
    mean = (tensors[0] + tensors[1]) / 2
    got = lore(tensors, base, alpha=1.0, rank=2)
    assert not torch.allclose(got, mean, atol=1e-2)
    expected = base + sum(truncate_rank(t - base, 2) for t in tensors)
    assert torch.allclose(got, expected, atol=1e-5)
    # the study's single-task form: one task vector, thresholded
    (child,) = tensors[:1]
    one = lore([child], base, alpha=0.8, threshold=0.3)
    delta = one - base
    assert int(torch.linalg.matrix_rank(delta, atol=1e-4)) < min(delta.shape)
    assert not torch.allclose(one, child, atol=1e-2)
    # threshold 0 keeps the task vector whole: task arithmetic
    whole = lore([child], base, alpha=0.8, threshold=0.0)
    assert torch.allclose(whole, base + 0.8 * (child - base), atol=1e-5)
    # 1-D tensors: task arithmetic with alpha
    b1, t1 = torch.zeros(5), torch.arange(5.0)
    assert torch.allclose(lore([t1], b1, alpha=0.5), 0.5 * t1)


def test_lore_takes_a_base_when_given():
    method = get_method("lore")
    assert method.needs_base is False and method.optional_base is True
