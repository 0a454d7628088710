"""The `lexical` judge: a key point is covered when one of its phrasings occurs in the
response, as whole words, after both are normalised the same way; or, for a regex key point,
when the pattern matches. Deterministic and free.

Normalisation (`normalize`): Unicode NFKC and case folding (fullwidth `１０` is `10`, `ß` is
`ss`); invisible format characters (zero-width spaces, soft hyphens) removed; the text cut
into tokens: words, numbers, symbols (`%`, `$`, `€`, `+`, emoji: each its own token), and, in
scripts written without spaces (Han, kana, Thai, ...), single characters; punctuation and
whitespace only separate tokens. A number is written one way: thousands separators dropped
(`1,000` = `1000`), trailing decimal zeros dropped (`0.50` = `0.5`, `2.0` = `2`), leading
zeros dropped (`007` = `7`), any decimal digits read as ASCII (`٣` = `3`), a minus sign kept
only in front of a number that does not follow a word (`-5`; `10-20` is `10 20`). Letters and
digits are split apart, so `5kg` = `5 kg`.

A regex key point is matched with RE2 (linear time in the response, whatever the pattern) on
the response after NFKC only: as written, case-sensitive unless the pattern says `(?i)`.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

import regex

from l2smerge.eval.judges.base import COVERED, MISSED, Judgement, JudgeRequest, PointVerdict
from l2smerge.eval.tasks import KeyPoint
from l2smerge.util.errors import L2SError

# Longer responses are read up to here (and the judgement says so). Normalising is linear but
# costs ~5 us a token in Python; 200k characters is ~50k tokens, five times the study's
# 10,240-token limit, so only runaway output is cut, and it costs at most about a second.
MAX_INPUT_CHARS = 200_000
REGEX_MAX_MEM = 8 << 20  # RE2's automaton budget per pattern
EVIDENCE_CHARS = 200

_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_TOKEN = regex.compile(
    # a number: optional minus (not after a word or a number), 1,000-style or plain digits,
    # optional decimals
    r"(?P<sign>(?<![\p{L}\p{M}\p{N}.,\-])-)?"
    r"(?P<int>\p{Nd}{1,3}(?:,\p{Nd}{3})+(?!\p{Nd}|,\p{Nd})|\p{Nd}+)"
    r"(?P<frac>\.\p{Nd}+)?"
    rf"|(?P<char>[{_UNSPACED}])"
    rf"|(?P<word>[[\p{{L}}\p{{M}}]--[{_UNSPACED}]]+)"
    r"|(?P<symbol>[\p{S}%‰‱])",
    regex.V1,
)


def _digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(c)) for c in text if c != ",")


def _number(match: regex.Match) -> str:
    whole = _digits(match["int"]).lstrip("0") or "0"
    frac = _digits(match["frac"][1:]).rstrip("0") if match["frac"] else ""
    number = f"{whole}.{frac}" if frac else whole
    return f"-{number}" if match["sign"] and number != "0" else number


def tokens(text: str) -> list[str]:
    """The normalised tokens of `text` (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = unicodedata.normalize("NFKC", text.casefold())
    text = "".join(c for c in text if unicodedata.category(c) != "Cf").replace("\u2212", "-")
    return [_number(m) if m["int"] is not None else m[0] for m in _TOKEN.finditer(text)]


def normalize(text: str) -> str:
    """`text` as its normalised tokens joined by single spaces."""
    return " ".join(tokens(text))


@functools.lru_cache(maxsize=4096)
def _phrase(phrasing: str) -> str:
    return f" {normalize(phrasing)} "


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    import re2

    options = re2.Options()
    options.log_errors = False
    options.max_mem = REGEX_MAX_MEM
    return re2.compile(pattern, options)


def compile_regex(pattern: str, where: str) -> Any:
    """The RE2 program for `pattern`; an error naming `where` if RE2 cannot compile it
    (backreferences and lookarounds are not linear-time, so RE2 has none)."""
    import re2

    try:
        return _regex(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise L2SError(f"{where}: bad regex {pattern!r} ({reason}; RE2 syntax)") from None


def judge_point(point: KeyPoint, text: str, normalized: str) -> PointVerdict:
    """One key point against a response given as its NFKC text and its normalised form
    wrapped in spaces."""
    if point.regex is not None:
        match = _regex(point.regex).search(text)
        if match is None:
            return PointVerdict(point.text, MISSED)
        return PointVerdict(point.text, COVERED, match.group(0)[:EVIDENCE_CHARS])
    for phrasing in point.phrasings:
        if _phrase(phrasing) in normalized:
            return PointVerdict(point.text, COVERED, phrasing)
    return PointVerdict(point.text, MISSED)


def judge_response(response: str, key_points: Sequence[KeyPoint]) -> Judgement:
    truncated = len(response) > MAX_INPUT_CHARS
    response = response[:MAX_INPUT_CHARS]
    text = unicodedata.normalize("NFKC", response)
    normalized = f" {normalize(response)} "
    verdicts = tuple(judge_point(p, text, normalized) for p in key_points)
    return Judgement(verdicts, input_truncated=truncated)


class LexicalJudge:
    name = "lexical"

    def info(self) -> dict[str, Any]:
        return {"judge": self.name}

    def judge(self, requests: Sequence[JudgeRequest]) -> Iterator[tuple[int, Judgement]]:
        for index, request in enumerate(requests):
            yield index, judge_response(request.response, request.key_points)

    def close(self) -> None:
        pass
