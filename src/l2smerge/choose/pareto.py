"""The accuracy / length Pareto front: higher accuracy and fewer tokens are both better."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(accuracy: Sequence[float], tokens: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points, ordered by tokens (shortest first).

    Point i is dominated when some j is at least as accurate and at most as long, and
    strictly better in one of the two. Exact duplicates are all kept."""
    if len(accuracy) != len(tokens):
        raise ValueError("accuracy and tokens must have the same length")
    front = []
    for i, (acc_i, tok_i) in enumerate(zip(accuracy, tokens, strict=True)):
        dominated = any(
            acc_j >= acc_i and tok_j <= tok_i and (acc_j > acc_i or tok_j < tok_i)
            for acc_j, tok_j in zip(accuracy, tokens, strict=True)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (tokens[i], -accuracy[i]))
