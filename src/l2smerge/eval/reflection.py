"""Reflection keywords: the study counts a response as *reflective* when it contains any of
them (DESIGN.md, "Evaluation protocol"). Matched case-insensitively as whole words, so
"awaited" does not count as "wait"."""

from __future__ import annotations

import re

REFLECTION_KEYWORDS = (
    "wait",
    "re-examine",
    "recap",
    "double-check",
    "let me check",
    "let me just check",
    "let me verify",
    "let me just verify",
)

# Longest first so overlapping phrases are not counted twice.
_PATTERN = re.compile(
    r"(?<![\w-])(?:"
    + "|".join(re.escape(k) for k in sorted(REFLECTION_KEYWORDS, key=len, reverse=True))
    + r")(?![\w-])",
    re.IGNORECASE,
)


def count_reflections(response: str) -> int:
    """How many reflection keywords occur in `response`."""
    return len(_PATTERN.findall(response))
