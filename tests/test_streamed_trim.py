"""Magnitude trims found in one streamed pass (a window of magnitudes bounded from a sample of
rows) must equal the whole-tensor selection exactly, and fall back to it where the window
cannot decide: a misleading sample, zeros, surplus ties under mergekit's rule, l1 rescaling."""

from __future__ import annotations

import pytest
import torch

import l2smerge.methods.sparsify as sparsify
from l2smerge.methods.sparsify import (
    apply_magnitude_trim_,
    magnitude_trims,
    sample_row_groups,
    trim_by_magnitude,
)

ROWS, COLS, BLOCK = 4096, 64, 301


def gaussian(g: torch.Generator) -> torch.Tensor:
    return torch.randn(ROWS, COLS, generator=g) * 0.01


def rows_of_very_different_sizes(g: torch.Generator) -> torch.Tensor:
    scale = 10.0 ** (torch.arange(ROWS) % 7 - 3).float()
    return torch.randn(ROWS, COLS, generator=g) * scale[:, None]


def few_distinct_magnitudes(g: torch.Generator) -> torch.Tensor:
    return torch.randint(-6, 7, (ROWS, COLS), generator=g).float() * 0.01


def bfloat16_weights(g: torch.Generator) -> torch.Tensor:
    """A fine-tune's task vector between bfloat16 weights: few-bit numbers, so thousands of
    entries share the threshold's magnitude and a sample's window can be that one value."""
    base = torch.randn(ROWS, COLS, generator=g).to(torch.bfloat16)
    tuned = (base.float() + torch.randn(ROWS, COLS, generator=g) * 0.01).to(torch.bfloat16)
    return tuned.float() - base.float()


def mostly_zero(g: torch.Generator) -> torch.Tensor:
    delta = torch.randn(ROWS, COLS, generator=g)
    return delta * (torch.rand(ROWS, COLS, generator=g) < 0.1)


def sample_misleads(g: torch.Generator) -> torch.Tensor:
    """The sampled rows hold tiny task vectors, every other row a large one."""
    delta = torch.randn(ROWS, COLS, generator=g)
    for start, stop in sample_row_groups(ROWS):
        delta[start:stop] *= 1e-4
    return delta


def vocabulary_rows_untouched(g: torch.Generator) -> torch.Tensor:
    """An embedding whose last rows (tokens never seen in fine-tuning) did not move."""
    delta = torch.randn(ROWS, COLS, generator=g) * 0.01
    delta[ROWS // 3 :] = 0.0
    return delta


CASES = [
    gaussian,
    bfloat16_weights,
    rows_of_very_different_sizes,
    few_distinct_magnitudes,
    mostly_zero,
    sample_misleads,
    vocabulary_rows_untouched,
]


def trims(delta: torch.Tensor, density: float, **rules: str) -> tuple[list, list[int]]:
    """magnitude_trims with the streamed path on, and how many |δ| buffers it filled."""
    filled = []
    planned = sparsify.plan_magnitude_trim

    def counting(fill, *args, **kwargs):
        filled.append(1)
        return planned(fill, *args, **kwargs)

    def blocks(_k: int):
        for start in range(0, ROWS, BLOCK):
            yield delta[start : start + BLOCK].clone()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparsify, "STREAMED_TRIM_BYTES", 0)
        mp.setattr(sparsify, "plan_magnitude_trim", counting)
        got = magnitude_trims(
            blocks,
            1,
            delta.numel(),
            [density],
            task_vector_rows=lambda _k, a, b: delta[a:b].clone(),
            rows=ROWS,
            **rules,
        )
    return got, filled


def trimmed_in_blocks(delta: torch.Tensor, trim) -> torch.Tensor:
    parts = [
        apply_magnitude_trim_(delta[s : s + BLOCK].clone(), trim, s * COLS)
        for s in range(0, ROWS, BLOCK)
    ]
    return torch.cat(parts)


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("density", [0.0005, 0.2, 0.5, 0.97])
@pytest.mark.parametrize("rule", ["l2smerge", "mergekit"])
def test_streamed_trims_equal_the_whole_tensors(case, density, rule):
    delta = case(torch.Generator().manual_seed(7))
    (trim,), _ = trims(delta, density, tie_break=rule)
    whole = trim_by_magnitude(delta, density, tie_break=rule)
    assert torch.equal(trimmed_in_blocks(delta, trim), whole)


@pytest.mark.parametrize(
    "case",
    [
        gaussian,
        bfloat16_weights,
        rows_of_very_different_sizes,
        few_distinct_magnitudes,
        vocabulary_rows_untouched,
    ],
)
def test_a_representative_sample_keeps_no_whole_tensor_buffer(case):
    delta = case(torch.Generator().manual_seed(1))
    _, filled = trims(delta, 0.2)
    assert filled == []


@pytest.mark.parametrize(
    "case, rules",
    [
        (sample_misleads, {}),
        (mostly_zero, {}),
        (few_distinct_magnitudes, {"tie_break": "mergekit"}),  # surplus ties at the threshold
        (gaussian, {"rescale": "l1"}),
    ],
)
def test_undecidable_windows_fall_back_to_the_buffer(case, rules):
    delta = case(torch.Generator().manual_seed(1))
    (trim,), filled = trims(delta, 0.2, **rules)
    assert filled == [1]
    assert torch.equal(trimmed_in_blocks(delta, trim), trim_by_magnitude(delta, 0.2, **rules))


def test_sample_groups_are_sorted_disjoint_and_cover_a_small_share():
    for rows in (1, 5, 64, 1000, 151_936):
        groups = sample_row_groups(rows)
        assert all(0 <= a < b <= rows for a, b in groups)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(groups, groups[1:], strict=False))
        covered = sum(b - a for a, b in groups)
        assert covered <= max(256, rows // 16)


def test_a_tensor_of_few_rows_keeps_the_buffer_instead_of_sampling_most_of_it(monkeypatch):
    """Fused experts (one row per expert) would be sampled whole: the buffer is cheaper."""
    delta = torch.randn(16, 4096, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(sparsify, "STREAMED_TRIM_BYTES", 0)
    planned, filled = sparsify.plan_magnitude_trim, []

    def counting(fill, *args, **kwargs):
        filled.append(1)
        return planned(fill, *args, **kwargs)

    monkeypatch.setattr(sparsify, "plan_magnitude_trim", counting)
    read: list[tuple[int, int]] = []

    def rows(_k: int, a: int, b: int) -> torch.Tensor:
        read.append((a, b))
        return delta[a:b].clone()

    (trim,) = magnitude_trims(
        lambda _k: (delta[s : s + 4].clone() for s in range(0, 16, 4)),
        1,
        delta.numel(),
        [0.2],
        task_vector_rows=rows,
        rows=16,
    )
    assert filled == [1] and read == []  # no sample was read
    parts = [apply_magnitude_trim_(delta[s : s + 4].clone(), trim, s * 4096) for s in (0, 4, 8, 12)]
    assert torch.equal(torch.cat(parts), trim_by_magnitude(delta, 0.2))
