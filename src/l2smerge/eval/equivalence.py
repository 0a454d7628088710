"""Do two canonical answers (normalize.canonical) state the same answer?

The answer's shape decides, the same for gold and prediction:
- a list (top-level commas, "and", `\\pm`): the same elements in any order, as many;
- a multiple-choice letter: the same letter, with or without parentheses;
- words (`\\text{Evelyn}`): the same words, case and spacing aside; never symbolic;
- a statement `label = value` (`x = 5`, `f(n) = 2n+1`, `\\log_8 4 = 2/3`): its value; an
  inequality in one variable (`x > 2`) is its interval; any other equation (`3x+4y-5z=0`)
  is judged whole;
- tuples, intervals, sets, vectors, matrices: their elements, in order (sets in any order),
  with the same brackets (`(1,3]` is not `[1,3)`);
- numbers (decimals, fractions, mixed numbers, e-notation, percent): integers exactly, others
  within a relative 1e-4; `20%` also equals 0.2;
- a number followed by a unit letter (`\\frac{37}{4} m`) equals a gold that is that number;
- anything else: a `Leaf` judge, math-verify's symbolic equality (symbolic.py), which runs in
  a separate process. Without one, `NeedsSymbolic` is raised, so everything decided here
  is decided without sympy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from l2smerge.eval.normalize import tokenize

NUMERIC_REL_TOL = Decimal("1e-4")

Leaf = Callable[[str, str], bool]  # (pred, gold) -> equal, for what only sympy can judge


class NeedsSymbolic(Exception):
    """Raised when only a symbolic judge can decide and none was given."""


_OPENERS = {"(": ")", "[": "]", "\\{": "\\}", "\\langle": "\\rangle"}
_RELATIONS = frozenset({"=", "<", ">", "\\leq", "\\geq", "\\neq", "\\approx", "\\in"})
_CHOICE = re.compile(r"\(?([A-Ea-e])\)?")
_CHOICE_PREFIX = re.compile(r"\(([A-E])\)(?![-+*/^=_.,])")  # "(C) 27", not "(C)+1"
# A label on the left of "=": x, x_{1}, m_{\max}, f(x), f^{-1}(x), \theta, N(n), (x,y,z).
_GREEK = (
    r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|"
    r"lambda|mu|nu|xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|"
    r"Lambda|Xi|Sigma|Phi|Psi|Omega|ell)"
)
_SYMBOL = (
    rf"(?:[A-Za-z]|{_GREEK})(?:_\{{[^{{}}]*\}}|_[A-Za-z0-9])?"
    r"(?:'|\^\{\\prime\}|\^\{-1\})*"  # x', x^{\prime}, f^{-1}
)
_LABEL = re.compile(
    rf"{_SYMBOL}(?:\([^()+\-]*\))?|\({_SYMBOL}(?:,{_SYMBOL})*\)|\\angle ?[A-Za-z0-9_{{}}]+"
)
# A left-hand side that is a number once evaluated, though it names a variable: a limit,
# sum, product or definite integral (`\lim_{n \to \infty} f(n) = 1/2`).
_BOUND_PREFIXES = ("\\lim", "\\sum", "\\prod", "\\int_")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
}
_CONSTANT_COMMANDS = frozenset(
    {
        "\\frac", "\\sqrt", "\\pi", "\\cdot", "\\times", "\\sin", "\\cos", "\\tan", "\\cot",
        "\\sec", "\\csc", "\\arcsin", "\\arccos", "\\arctan", "\\log", "\\ln", "\\exp",
        "\\binom", "\\lfloor", "\\rfloor", "\\lceil", "\\rceil", "\\infty", "\\div",
    }
)  # fmt: skip
_NOT_UNIT_LETTERS = frozenset("eixyznk")

_INT = r"[-+]?\d+"
_DEC = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(
    rf"(?P<mant>{_DEC})(?:(?:\\times|\\cdot)10\^\{{(?P<exp>{_INT})\}}|\^\{{(?P<pow>{_INT})\}})?"
    r"(?P<pct>%)?"
)
_FRACTION = re.compile(
    rf"(?P<sign>[-+]?)(?P<whole>\d+)?\\frac\{{(?P<num>{_INT})\}}\{{(?P<den>{_INT})\}}(?P<pct>%)?"
)
_REPEATING = re.compile(r"(?P<sign>-?)(?P<whole>\d*)\.(?P<fixed>\d*)\\overline\{(?P<rep>\d+)\}")
_SLASH = re.compile(rf"(?P<num>{_DEC})/(?P<den>{_DEC})(?P<pct>%)?")
_MAX_EXPONENT = 10_000  # larger exponents are left to the symbolic judge (bounded in time)


@dataclass(frozen=True)
class Number:
    value: Decimal
    percent: bool = False


def parse_number(s: str) -> Number | None:
    """A plain number in canonical form, or None: 12, -0.5, 4.4\\times10^{7}, 10^{-5},
    \\frac{3}{4}, 2\\frac{1}{2} (mixed), 7/2, 20%."""
    try:
        m = _NUMBER.fullmatch(s)
        if m:
            if m.group("pow") is not None:  # 10^{k} only
                if m.group("mant").lstrip("+-") != "10":
                    return None
                exp = int(m.group("pow"))
                if abs(exp) > _MAX_EXPONENT:
                    return None
                sign = -1 if m.group("mant").startswith("-") else 1
                return Number(Decimal(sign).scaleb(exp), bool(m.group("pct")))
            value = Decimal(m.group("mant"))
            if m.group("exp") is not None:
                exp = int(m.group("exp"))
                if abs(exp) > _MAX_EXPONENT:
                    return None
                value = value.scaleb(exp)
            return Number(value, bool(m.group("pct")))
        m = _FRACTION.fullmatch(s)
        if m:
            num, den = Decimal(m.group("num")), Decimal(m.group("den"))
            if den == 0:
                return None
            value = num / den
            if m.group("whole"):
                if num < 0:
                    return None
                value += Decimal(m.group("whole"))
            if m.group("sign") == "-":
                value = -value
            return Number(value, bool(m.group("pct")))
        m = _REPEATING.fullmatch(s)
        if m:  # 0.1\overline{6} = 1/6
            fixed, rep = m.group("fixed"), m.group("rep")
            value = Decimal(m.group("whole") or 0) + Decimal(int(fixed or 0)) / 10 ** len(fixed)
            value += Decimal(int(rep)) / ((10 ** len(rep) - 1) * 10 ** len(fixed))
            return Number(-value if m.group("sign") else value)
        m = _SLASH.fullmatch(s)
        if m:
            den = Decimal(m.group("den"))
            if den == 0:
                return None
            return Number(Decimal(m.group("num")) / den, bool(m.group("pct")))
    except (InvalidOperation, ValueError, ArithmeticError):
        return None
    return None


def _close(a: Decimal, b: Decimal) -> bool:
    if a == b:
        return True
    if a == a.to_integral_value() and b == b.to_integral_value():
        return False  # integers are exact: 70001 is not 70000
    return abs(a - b) <= NUMERIC_REL_TOL * max(abs(a), abs(b))


def numbers_equal(pred: Number, gold: Number, *, integer: bool = False) -> bool:
    """Integers exactly, other numbers within a relative 1e-4; a percentage also equals its
    fraction (`20%` = 0.2). `integer`: the gold is an integer answer (AIME, AMC)."""
    try:
        if integer and pred.value != pred.value.to_integral_value():
            return False
        if _close(pred.value, gold.value):
            return True
        if gold.percent and not pred.percent:
            return _close(pred.value, gold.value / 100)
        if pred.percent and not gold.percent:
            return _close(pred.value / 100, gold.value)
    except ArithmeticError:
        return False
    return False


# --- Splitting canonical strings -----------------------------------------------------------


def _top_level(s: str) -> list[tuple[str, int]]:
    """Tokens of `s` with their bracket depth (the depth before the token)."""
    out = []
    depth = 0
    for t in tokenize(s):
        if t in ("(", "[", "{", "\\{", "\\langle"):
            out.append((t, depth))
            depth += 1
        elif t in (")", "]", "}", "\\}", "\\rangle"):
            depth = max(0, depth - 1)
            out.append((t, depth))
        else:
            out.append((t, depth))
    return out


def split_top(s: str, separators: frozenset[str]) -> list[str]:
    """`s` split at the separator tokens outside all brackets."""
    parts: list[str] = []
    current: list[str] = []
    for t, depth in _top_level(s):
        if depth == 0 and t in separators:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(t)
    parts.append("".join(current).strip())
    return parts


def _relation(s: str) -> tuple[list[str], list[str]] | None:
    """(parts, operators) of a statement with top-level relation operators, else None."""
    parts: list[str] = []
    ops: list[str] = []
    current: list[str] = []
    for t, depth in _top_level(s):
        if depth == 0 and t in _RELATIONS:
            parts.append("".join(current).strip())
            ops.append(t)
            current = []
        else:
            current.append(t)
    if not ops:
        return None
    parts.append("".join(current).strip())
    if any(not p for p in parts):
        return None
    return parts, ops


def _bracketed(s: str) -> tuple[str, str, list[str]] | None:
    """(opener, closer, items) when `s` is one bracketed sequence: (a,b), [a,b), \\{a\\}."""
    tokens = _top_level(s)
    if len(tokens) < 2 or tokens[0][0] not in _OPENERS:
        return None
    opener, closer = tokens[0][0], tokens[-1][0]
    if tokens[-1][1] != 0 or any(d == 0 for _, d in tokens[1:-1]):
        return None  # the first bracket closes before the end: (a)+(b)
    if opener in ("(", "[") and closer not in (")", "]"):
        return None
    if opener in ("\\{", "\\langle") and closer != _OPENERS[opener]:
        return None
    inner = "".join(t for t, _ in tokens[1:-1])
    items = split_top(inner, frozenset({","}))
    if opener == "\\{":  # {1\pm\sqrt{5}, -2}: a set of three
        items = [x for item in items for x in _expand_pm(item)]
    return opener, closer, items


_MATRIX = re.compile(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", re.DOTALL)


def _matrix(s: str) -> list[list[str]] | None:
    """Rows of cells when `s` is one matrix (in brackets or not)."""
    if s[:1] in "([" and s[-1:] in ")]":
        s = s[1:-1]
    if not (s.startswith("\\begin{pmatrix}") and s.endswith("\\end{pmatrix}")):
        return None
    body = s[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")]
    if "\\begin{pmatrix}" in body:
        return None
    rows = [r for r in split_top(body, frozenset({"\\\\"})) if r]
    return [split_top(r, frozenset({"&"})) for r in rows]


def _expand_pm(s: str) -> list[str]:
    """`1\\pm\\sqrt{19}` -> [`1+\\sqrt{19}`, `1-\\sqrt{19}`]: one `\\pm` or `\\mp`, not in
    a bracketed list (`\\{1\\pm\\sqrt{5},-2\\}` expands its own items)."""
    if "\\pm" not in s and "\\mp" not in s:
        return [s]
    seq = _bracketed(s)
    if seq is not None and len(seq[2]) > 1:
        if seq[0] != "(" or sum(item.count("\\pm") for item in seq[2]) > 3:
            return [s]  # a set expands its own items; eight points at most
        # (\pm 3, \pm 2): every sign of every item, four points
        points = [""]
        for item in seq[2]:
            points = [f"{p},{x}" if p else x for p in points for x in _expand_pm(item)]
        return [f"({p})" for p in points] if len(points) > 1 else [s]
    tokens = tokenize(s)
    signs = [i for i, t in enumerate(tokens) if t in ("\\pm", "\\mp")]
    if len(signs) != 1:
        return [s]
    i = signs[0]
    plus, minus = ("+", "-") if tokens[i] == "\\pm" else ("-", "+")
    before, after = "".join(tokens[:i]), "".join(tokens[i + 1 :])
    return [before + plus + after, before + minus + after]


def _elements(s: str) -> list[str]:
    out: list[str] = []
    for part in split_top(s, frozenset({",", ";"})):
        if part:
            out.extend(_expand_pm(part))
    return out


def _text_form(s: str) -> str:
    s = s.replace("\\text{", "").replace("}", "").replace("{", "")
    return re.sub(r"[\s~]", "", s).lower().rstrip(".,;!")


def _is_words(s: str) -> bool:
    """Words at the top level (`\\text{No solution}`), not in a subscript."""
    return "\\text" in s and any(t == "\\text" and d == 0 for t, d in _top_level(s))


def _number_word(s: str) -> Number | None:
    """`three`, `\\text{Twelve}`: a number written as one English word (0-20, tens, 100)."""
    value = _NUMBER_WORDS.get(_text_form(s))
    return None if value is None else Number(Decimal(value))


def _is_constant(s: str) -> bool:
    """No variable: letters only in known constant/function commands, or e and i alone."""
    if not s or "\\text{" in s:
        return False
    for t in tokenize(s.replace("\\begin{pmatrix}", "").replace("\\end{pmatrix}", "")):
        if t[:1] == "\\" and t[1:].isalpha() and t not in _CONSTANT_COMMANDS:
            return False
        if t.isalpha() and len(t) == 1 and t not in "ei":
            return False
    return True


def _value_and_unit_letters(s: str) -> str | None:
    """The value of `\\frac{37}{4}m`, `5m^{2}`, `9.8m/s^{2}`: a constant followed by unit
    letters (not e, i, or the usual variable names), else None."""
    tokens = tokenize(s)
    k = len(tokens)
    letters = 0
    while k > 0:
        t = tokens[k - 1]
        if len(t) == 1 and t.isalpha():
            if t in _NOT_UNIT_LETTERS:
                return None
            letters += 1
            k -= 1
        elif t == "/":
            k -= 1
        elif t == "}" and k >= 4 and tokens[k - 3] == "{" and tokens[k - 4] == "^":
            if not re.fullmatch(r"-?\d", tokens[k - 2]):
                return None
            k -= 4
        elif t == "}" and k >= 5 and tokens[k - 4] == "{" and tokens[k - 5] == "^":
            if tokens[k - 3] != "-" or not tokens[k - 2].isdigit():
                return None
            k -= 5
        else:
            break
    value = "".join(tokens[:k])
    if letters == 0 or not value or value[-1] not in "0123456789}" or not _is_constant(value):
        return None
    return value


# --- Comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Judge:
    integer: bool
    leaf: Leaf | None

    def symbolic(self, pred: str, gold: str) -> bool:
        if self.leaf is None:
            raise NeedsSymbolic
        return self.leaf(pred, gold)

    def answer(self, pred: str, gold: str) -> bool:
        if pred == gold:
            return True
        if not pred:
            return False
        golds, preds = _elements(gold), _elements(pred)
        if len(golds) == 1 and len(preds) == 1:
            return self.element(preds[0], golds[0])
        if len(golds) == 1:
            return self.one_against_many(golds[0], preds, gold_is_one=True)
        if len(preds) == 1:
            return self.one_against_many(preds[0], golds, gold_is_one=False)
        return self.unordered(preds, golds)

    def one_against_many(self, one: str, many: list[str], *, gold_is_one: bool) -> bool:
        """A set, point or union on one side, a list on the other: `\\{1,2\\}` and `1, 2`;
        `(-2,1)` and `x=-2, y=1`; `(-\\infty,2)\\cup(3,\\infty)` and `x<2, x>3`."""

        def pair(ones: list[str], ordered: bool) -> bool:
            if gold_is_one:
                return self.ordered(many, ones) if ordered else self.unordered(many, ones)
            return self.ordered(ones, many) if ordered else self.unordered(ones, many)

        if gold_is_one and all(self.element(m, one) for m in many):
            return True  # the same answer twice: `15\\frac{39}{40}, \\frac{639}{40}`
        seq = _bracketed(one)
        if seq and seq[0] == "\\{":
            return pair(seq[2], ordered=False)
        if seq and seq[0] == "(" and seq[1] == ")" and len(seq[2]) == len(many):
            if all((rel := _relation(m)) and _LABEL.fullmatch(rel[0][0]) for m in many):
                return pair(seq[2], ordered=True)
        union = split_top(one, frozenset({"\\cup"}))
        if len(union) > 1:
            return pair(union, ordered=False)
        return False

    def unordered(self, preds: list[str], golds: list[str]) -> bool:
        """Each gold matched by a different prediction, as many predictions as golds."""
        if len(preds) != len(golds):
            return False
        remaining = list(preds)
        pending: list[str] = []
        for g in golds:  # exact matches first: cheap and unambiguous
            if g in remaining:
                remaining.remove(g)
            else:
                pending.append(g)
        for g in pending:
            for p in remaining:
                if self.element(p, g):
                    remaining.remove(p)
                    break
            else:
                return False
        return True

    def ordered(self, preds: list[str], golds: list[str]) -> bool:
        return len(preds) == len(golds) and all(
            self.element(p, g) for p, g in zip(preds, golds, strict=True)
        )

    def element(self, pred: str, gold: str) -> bool:
        if pred == gold:
            return True
        if not pred or not gold:
            return False
        choice = _CHOICE.fullmatch(gold)
        if choice:
            p = _CHOICE.fullmatch(pred) or _CHOICE_PREFIX.match(pred)
            return bool(p) and p.group(1).upper() == choice.group(1).upper()
        gold_rel, pred_rel = _relation(gold), _relation(pred)
        if gold_rel or pred_rel:
            return self.relation(pred, gold, pred_rel, gold_rel)
        return self.value(pred, gold)

    def relation(
        self,
        pred: str,
        gold: str,
        pred_rel: tuple[list[str], list[str]] | None,
        gold_rel: tuple[list[str], list[str]] | None,
    ) -> bool:
        gold_values = _values(gold_rel) if gold_rel else [gold]
        pred_claims = _claims(pred_rel) if pred_rel else [pred]
        if gold_values is not None and pred_claims is not None:
            # Whatever the prediction claims must be one of the gold's values.
            return all(any(self.value(c, g) for g in gold_values) for c in pred_claims)
        gold_set, pred_set = _as_interval(gold_rel), _as_interval(pred_rel)
        if gold_set or pred_set:
            return self.value(pred_set or pred, gold_set or gold)
        if gold_rel and pred_rel:
            return self.symbolic(pred, gold)  # two equations, judged whole
        return False

    def value(self, pred: str, gold: str) -> bool:
        if pred == gold:
            return True
        g_num, p_num = parse_number(gold), parse_number(pred)
        if g_num is not None and p_num is None:
            p_num = _number_word(pred)
            if p_num is None and _CHOICE_PREFIX.match(pred):  # "(B) 27": the choice's value
                return self.value(pred[3:], gold)
        if _is_words(gold) or _is_words(pred):
            if g_num is not None and p_num is not None:
                return numbers_equal(p_num, g_num, integer=self.integer)
            return _text_form(pred) == _text_form(gold)
        if g_num is not None and p_num is not None:
            return numbers_equal(p_num, g_num, integer=self.integer)
        if g_num is not None and p_num is None:
            stripped = _value_and_unit_letters(pred)
            if stripped is not None:
                return self.value(stripped, gold)
        g_mat, p_mat = _matrix(gold), _matrix(pred)
        if g_mat is not None or p_mat is not None:
            return self.matrix(p_mat, g_mat, pred, gold)
        g_seq, p_seq = _bracketed(gold), _bracketed(pred)
        if g_seq and len(g_seq[2]) == 1 and g_seq[0] in ("(", "[") and g_seq[0] != "\\{":
            g_seq, gold = None, g_seq[2][0]  # (x): just parentheses
        if p_seq and len(p_seq[2]) == 1 and p_seq[0] in ("(", "["):
            p_seq, pred = None, p_seq[2][0]
        if g_seq or p_seq:
            if not (g_seq and p_seq):
                return False
            return self.sequence(p_seq, g_seq)
        g_union = split_top(gold, frozenset({"\\cup"}))
        p_union = split_top(pred, frozenset({"\\cup"}))
        if len(g_union) > 1 or len(p_union) > 1:
            return len(g_union) == len(p_union) and self.unordered(p_union, g_union)
        if (g_num is None) != (p_num is None) and not _is_constant(pred if p_num is None else gold):
            return False  # a number is never equal to an expression with a variable
        return self.symbolic(pred, gold)

    def sequence(self, pred: tuple[str, str, list[str]], gold: tuple[str, str, list[str]]):
        p_open, p_close, p_items = pred
        g_open, g_close, g_items = gold
        if g_open == "\\{" or p_open == "\\{":
            return g_open == p_open and self.unordered(p_items, g_items)
        norm = {"\\langle": "(", "\\rangle": ")"}
        if (norm.get(p_open, p_open), norm.get(p_close, p_close)) != (
            norm.get(g_open, g_open),
            norm.get(g_close, g_close),
        ):
            return False
        return self.ordered(p_items, g_items)

    def matrix(self, pred_rows, gold_rows, pred: str, gold: str) -> bool:
        if pred_rows is not None and gold_rows is not None:
            if [len(r) for r in pred_rows] != [len(r) for r in gold_rows]:
                return False
            return self.ordered(
                [c for r in pred_rows for c in r], [c for r in gold_rows for c in r]
            )
        # A vector written as a tuple: (a, b, c) for a one-column or one-row matrix.
        rows, other = (pred_rows, gold) if pred_rows is not None else (gold_rows, pred)
        seq = _bracketed(other)
        if rows is None or seq is None or seq[0] != "(":
            return False
        cells = [c for r in rows for c in r]
        if not (len(rows) == 1 or all(len(r) == 1 for r in rows)):
            return False
        if pred_rows is not None:
            return self.ordered(cells, seq[2])
        return self.ordered(seq[2], cells)


def _value_indices(rel: tuple[list[str], list[str]]) -> list[int] | None:
    """Which parts of a statement are values: those after a label (`x = 5`, `f(x) = 2x`), the
    one before a label written last (`40/3 = a`), or all parts of a computation without
    variables (`\\log_8 4 = 2/3`, `\\lim_{n \\to \\infty} ... = 1/2`), chained with = or
    \\approx; `x \\in S` gives S. None for any other statement (an equation)."""
    parts, ops = rel
    if ops == ["\\in"] and _LABEL.fullmatch(parts[0]):
        return [1]
    if not all(op in ("=", "\\approx") for op in ops):
        return None
    if _LABEL.fullmatch(parts[0]):
        return list(range(1, len(parts)))
    if all(_is_constant(p) or p.startswith(_BOUND_PREFIXES) for p in parts):
        return list(range(len(parts)))
    if len(parts) == 2 and _LABEL.fullmatch(parts[1]):
        return [0]  # `40/3 = a`, `2x+1 = y`: the label written last
    return None


def _values(rel: tuple[list[str], list[str]]) -> list[str] | None:
    """A gold statement's values: any of them is the answer."""
    indices = _value_indices(rel)
    return None if indices is None else [rel[0][i] for i in indices]


def _claims(rel: tuple[list[str], list[str]]) -> list[str] | None:
    """What a predicted statement claims: its last exact value (`x = 10/2 = 5`, not the
    approximation after `\\approx`), and its left side when that is a computation
    (`i^{26} = ... = -i` claims i^{26} as well as -i)."""
    indices = _value_indices(rel)
    if indices is None:
        return None
    parts, ops = rel
    exact = [i for i in indices if "\\approx" not in ops[:i]] or indices
    claims = [parts[exact[-1]]]
    if indices[0] == 0 and exact[-1] != 0:
        claims.append(parts[0])
    return claims


def _as_interval(rel: tuple[list[str], list[str]] | None) -> str | None:
    """`x > 2` -> `(2,\\infty)`, `-1 \\leq x < 3` -> `[-1,3)`, for one variable; else None."""
    if rel is None:
        return None
    parts, ops = rel
    lower = {"<": "(", "\\leq": "["}
    upper = {"<": ")", "\\leq": "]"}
    flip = {">": "<", "\\geq": "\\leq"}
    if len(ops) == 1 and ops[0] in ("<", ">", "\\leq", "\\geq"):
        a, b = parts
        op = ops[0]
        if _LABEL.fullmatch(a):  # x > 2, x \leq 3
            if op in flip:
                return f"{lower[flip[op]]}{b},\\infty)"
            return f"(-\\infty,{b}{upper[op]}"
        if _LABEL.fullmatch(b):  # 2 < x
            if op in lower:
                return f"{lower[op]}{a},\\infty)"
            return f"(-\\infty,{a}{upper[flip[op]]}"
        return None
    if len(ops) == 2 and _LABEL.fullmatch(parts[1]):
        a, _, b = parts
        o1, o2 = ops
        if o1 in lower and o2 in upper:
            return f"{lower[o1]}{a},{b}{upper[o2]}"
        if o1 in flip and o2 in flip:
            return f"{lower[flip[o2]]}{b},{a}{upper[flip[o1]]}"
    return None


def same_answer(pred: str, gold: str, *, integer: bool = False, leaf: Leaf | None = None) -> bool:
    """Whether canonical `pred` states the same answer as canonical `gold`. `integer`: the
    gold is an integer answer (AIME, AMC). `leaf`: the symbolic judge; without one,
    NeedsSymbolic is raised where it would be needed."""
    return _Judge(integer, leaf).answer(pred, gold)
