"""Is an extracted answer equal to the gold answer? In order: normalised string equality
(cheap, and right for text answers); integers for AIME/AMC; plain numbers (exact for integers,
relative tolerance 1e-4 for decimals); math-verify's symbolic equivalence; element-wise
comparison, in any order, of comma-separated answers (OlympiadBench's multiple answers)."""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

from l2smerge.eval.benchmarks import BENCHMARKS, Item

GRADER_VERSION = "1"  # recorded in run.json; bump whenever a verdict can change
NUMERIC_REL_TOL = 1e-4
# Seconds math-verify may spend parsing, and comparing, one answer (main thread only).
MATH_VERIFY_TIMEOUT = 3

_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_CHOICE = re.compile(r"\(?([a-e])\)?")
_UNIT_WORDS = re.compile(
    r"\s*(?:dollars?|cents?|units?|degrees?|meters?|cm|km|inches|inch|feet|foot|ft|miles?|"
    r"hours?|minutes?|seconds?|days?|weeks?|years?|mph|km/h|sq\.?\s*units?)\s*$",
    re.IGNORECASE,
)


def clean(answer: str, unit: str | None = None) -> str:
    """The answer without what never changes its value: math delimiters, `\\left`/`\\right`,
    spacing commands, `\\text{}` wrappers, degree/dollar/percent signs, a trailing unit or
    full stop, "x =" in front, thousands separators. Still valid LaTeX."""
    s = answer.strip()
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SIZING.sub("", s)
    s = _SPACING.sub(" ", s)
    for _ in range(3):
        s = _TEXT_COMMANDS.sub(r"\1", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip().rstrip(".").strip()
    if unit:
        for form in {unit, unit.replace("$", ""), unit.replace("^\\circ", "")}:
            if form and s.endswith(form):
                s = s[: -len(form)].strip()
    s = _UNIT_WORDS.sub("", s)
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)  # 1,000 -> 1000 (not "1,3" lists)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s.strip())  # "x = 3" -> "3"
    return s.strip()


def normalize(answer: str, unit: str | None = None) -> str:
    """`clean`, then without whitespace and lower-cased: for string comparison only."""
    return re.sub(r"\s+", "", clean(answer, unit)).lower()


def _as_number(s: str) -> float | None:
    s = s.replace("\\times10^", "e").replace("\\cdot10^", "e").replace("{", "").replace("}", "")
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    try:
        if m:
            return int(m.group(1)) / int(m.group(2))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_close(a: str, b: str) -> bool:
    x, y = _as_number(a), _as_number(b)
    if x is None or y is None:
        return False
    if x.is_integer() and y.is_integer():
        return x == y  # the tolerance is for decimals; 70001 is not 70000
    return math.isclose(x, y, rel_tol=NUMERIC_REL_TOL, abs_tol=0.0)


def _as_integer(s: str) -> int | None:
    x = _as_number(s)
    if x is None or not x.is_integer():
        return None
    return int(x)


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside brackets or braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts if p.strip()]


def _timeout_seconds() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    if threading.current_thread() is not threading.main_thread():
        return None
    return MATH_VERIFY_TIMEOUT


@lru_cache(maxsize=8192)
def _parse(text: str) -> tuple:
    from math_verify import parse

    timeout = _timeout_seconds()
    try:
        return tuple(parse(f"${text}$", parsing_timeout=timeout))
    except Exception:  # math-verify raises on timeouts and malformed LaTeX alike
        return ()


def _symbolic_equal(gold: str, pred: str) -> bool:
    from math_verify import verify

    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(
            verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_timeout_seconds())
        )
    except Exception:
        return False


def answers_equal(pred: str, gold: str, *, unit: str | None = None, integer: bool = False) -> bool:
    """True when `pred` states the same answer as `gold`."""
    p, g = normalize(pred, unit), normalize(gold, unit)
    if not p:
        return False
    if p == g:
        return True
    choice_p, choice_g = _CHOICE.fullmatch(p), _CHOICE.fullmatch(g)
    if choice_p and choice_g:  # multiple choice: "(C)" = "C"
        return choice_p.group(1) == choice_g.group(1)
    if integer:
        # AIME/AMC answers are integers; "(113)" from "\\textbf{(113)}" is still 113.
        gi, pi = _as_integer(g), _as_integer(p.strip("()"))
        if gi is not None:
            return pi == gi
    if _as_number(p) is not None and _as_number(g) is not None:
        return _numbers_close(p, g)  # two plain numbers: no need to ask math-verify
    if "=" in p and "=" in g:
        # Two statements "... = value" (College Math writes whole equations as answers):
        # numeric values decide; math-verify misreads some of these.
        value_p, value_g = p.rsplit("=", 1)[1], g.rsplit("=", 1)[1]
        if _as_number(value_p) is not None and _as_number(value_g) is not None:
            return _numbers_close(value_p, value_g)
    if _symbolic_equal(clean(gold, unit), clean(pred, unit)):
        return True
    gold_parts, pred_parts = _split_top_level(gold), _split_top_level(pred)
    if len(gold_parts) > 1 and len(gold_parts) == len(pred_parts):
        remaining = list(pred_parts)
        for gp in gold_parts:
            match = next((pp for pp in remaining if answers_equal(pp, gp, unit=unit)), None)
            if match is None:
                return False
            remaining.remove(match)
        return True
    return False


def grade(extracted: str | None, item: Item) -> bool:
    """The verdict for one item's extracted answer."""
    if extracted is None:
        return False
    spec = BENCHMARKS[item.bench]
    return answers_equal(
        extracted,
        item.gold,
        unit=item.meta.get("unit"),
        integer=spec.integer_answers,
    )
