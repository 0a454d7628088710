"""Reading an LLM judge's answer: strict JSON, one verdict per key point, and each "covered"
verdict checked against the response (its quoted evidence must be there)."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

from l2smerge.eval.judges.base import COVERED, MISSED, UNSUPPORTED

_THINK = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"\A```(?:json)?[ \t]*\n(.*)\n```\Z", re.DOTALL)
_ELLIPSIS = re.compile(r"\.\.\.|\u2026")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "`": None})
_WHITESPACE = re.compile(r"\s+")


class MalformedVerdicts(ValueError):
    """The judge's answer does not follow the format; the message says how, for the judge."""


@dataclass(frozen=True)
class RawVerdict:
    covered: bool
    evidence: str


def parse_verdicts(output: str, n_points: int) -> list[RawVerdict]:
    """The judge's answer as one verdict per key point, in key-point order.

    Accepted: exactly one JSON object `{"verdicts": [{"point": i, "covered": bool,
    "evidence": str}, ...]}` with each point 1..n once (any order; other keys ignored),
    optionally inside one ```json fence, optionally after a <think>...</think> block.
    Anything else raises MalformedVerdicts."""
    text = _THINK.sub("", output, count=1).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedVerdicts(f"the answer is not one JSON object ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("verdicts"), list):
        raise MalformedVerdicts('the answer must be an object with a "verdicts" list')
    verdicts: dict[int, RawVerdict] = {}
    for entry in data["verdicts"]:
        if not isinstance(entry, dict):
            raise MalformedVerdicts("each verdict must be an object")
        point = entry.get("point")
        if isinstance(point, bool) or not isinstance(point, int) or not 1 <= point <= n_points:
            raise MalformedVerdicts(f'"point" must be a key point number from 1 to {n_points}')
        if point in verdicts:
            raise MalformedVerdicts(f"key point {point} has two verdicts")
        covered = entry.get("covered")
        if not isinstance(covered, bool):
            raise MalformedVerdicts(f'key point {point}: "covered" must be true or false')
        evidence = entry.get("evidence", "")
        if evidence is None:
            evidence = ""
        if not isinstance(evidence, str):
            raise MalformedVerdicts(f'key point {point}: "evidence" must be a string')
        verdicts[point] = RawVerdict(covered, evidence)
    missing = [str(p) for p in range(1, n_points + 1) if p not in verdicts]
    if missing:
        raise MalformedVerdicts(f"no verdict for key point(s) {', '.join(missing)}")
    return [verdicts[p] for p in range(1, n_points + 1)]


def _squash(text: str) -> str:
    """Text as compared for evidence: NFKC, case-folded, curly quotes straightened, markdown
    emphasis marks (`*`, backticks) dropped, whitespace runs as one space."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_QUOTES).replace("*", "")
    return _WHITESPACE.sub(" ", text).strip()


def evidence_found(evidence: str, response: str) -> bool:
    """Whether a quoted span is in the response. Judges elide with "..." and wrap quotes in
    quote marks, so the span may be pieces, each found after the previous one; each piece
    must hold a letter or a digit (a lone comma is no evidence)."""
    pieces = [_squash(p).strip("'\" ") for p in _ELLIPSIS.split(evidence)]
    pieces = [p for p in pieces if p]
    if not pieces or not all(any(c.isalnum() for c in p) for p in pieces):
        return False
    haystack = _squash(response)
    start = 0
    for piece in pieces:
        found = haystack.find(piece, start)
        if found < 0:
            return False
        start = found + len(piece)
    return True


def point_status(verdict: RawVerdict, response: str) -> str:
    """COVERED only when the judge says so and its evidence is in the response."""
    if not verdict.covered:
        return MISSED
    return COVERED if evidence_found(verdict.evidence, response) else UNSUPPORTED
