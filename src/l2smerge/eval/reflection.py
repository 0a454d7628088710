"""Reflection keywords, counted two ways.

Ours (`count_reflections`, the `reflective` / `reflections` fields of results.jsonl): the
paper's eight keywords (DESIGN.md, "Evaluation protocol"), case-insensitive, as whole words,
so "awaited" does not count as "wait" and "let me verify" counts.

The study's (`study_reflections`, the `study_*` figures of summary.json): what the study's
evaluation script (src/evaluation/data_process.py of hahahawu/Long-to-Short-via-Model-Merging)
does: seven keywords ("let me verify" is not in its list) matched case-insensitively as plain
substrings, so "awaited" and "waiting" count. It reports the share of responses with a match
and the mean number of matches over those responses only. Both are kept so that our figures
can be read next to the study's tables.
"""

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

# The study's list, in its own order (which decides the match when two start at one place).
STUDY_REFLECTION_KEYWORDS = (
    "wait",
    "re-examine",
    "double-check",
    "let me check",
    "recap",
    "let me just verify",
    "let me just check",
)

# Longest first so overlapping phrases are not counted twice.
_PATTERN = re.compile(
    r"(?<![\w-])(?:"
    + "|".join(re.escape(k) for k in sorted(REFLECTION_KEYWORDS, key=len, reverse=True))
    + r")(?![\w-])",
    re.IGNORECASE,
)
_STUDY_PATTERN = re.compile(
    "|".join(re.escape(k) for k in STUDY_REFLECTION_KEYWORDS), re.IGNORECASE
)


def count_reflections(response: str) -> int:
    """How many reflection keywords occur in `response` as whole words (ours)."""
    return len(_PATTERN.findall(response))


def study_reflections(response: str) -> int:
    """How many of the study's keywords occur in `response` as substrings (the study's
    `re.findall` over its keyword list)."""
    return len(_STUDY_PATTERN.findall(response))
