"""The symbolic judge: math-verify's parser and equivalence for what equivalence.py cannot
decide by its own rules (expressions with variables, radicals, whole equations).

Only the grading worker process (grading_worker.py) imports this: sympy can run for minutes
or exhaust memory on a hostile answer (`9^{9^{9^{9}}}`), which that process is killed for.
Two deliberate differences from math-verify's defaults: no unit removal (its list drops a
trailing `m` from `\\frac{37}{4} m`, where m is a mass; normalize.py removes units by rule),
and constants are compared by value with a relative tolerance (math-verify rounds floats to
6 decimals, so 5.3e-9 would equal 5.4e-9)."""

from __future__ import annotations

import re
from functools import lru_cache

import sympy
from latex2sympy2_extended.math_normalization import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanAtom
from sympy.matrices import MatrixBase
from sympy.matrices.expressions import MatrixExpr

from l2smerge.eval.equivalence import NUMERIC_REL_TOL

_CONFIG = (
    LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            basic_latex=True,
            units=False,
            malformed_operators=True,
            nits=True,
            boxed="all",
            equations=False,
        ),
        try_extract_without_anchor=True,
    ),
    ExprExtractionConfig(try_extract_without_anchor=True),
)
_TOL = float(NUMERIC_REL_TOL)


# latex2sympy reads E as Euler's number and fails on E_{1} (an energy level in Minerva).
_E_WITH_INDEX = re.compile(r"(?<![\\A-Za-z])E_\{")


def _unify_symbols(expr):
    """Every free symbol as one plain symbol of its name, and `i` as the imaginary unit:
    latex2sympy makes `i` a real variable, and gives one name different assumptions in
    different places (so that `(4-6i)/13 - (4/13 - 6i/13)` does not simplify to 0). A
    relation is rebuilt unevaluated: with real symbols `x^2 + 121 = 0` would become False."""
    if isinstance(expr, Relational):
        return expr.func(_unify_symbols(expr.lhs), _unify_symbols(expr.rhs), evaluate=False)
    if not isinstance(expr, sympy.Basic) or not getattr(expr, "free_symbols", None):
        return expr
    return expr.xreplace(
        {
            s: sympy.I if s.name == "i" else sympy.Symbol(s.name)
            for s in expr.free_symbols
            if isinstance(s, sympy.Symbol)
        }
    )


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    text = _E_WITH_INDEX.sub(r"\\mathcal{E}_{", text)
    try:
        parsed = parse(f"${text}$", list(_CONFIG), parsing_timeout=None)
        return tuple(_unify_symbols(x) for x in parsed)
    except Exception:
        return ()


def _has_matrix(expr) -> bool:
    """A product with a matrix (`\\frac{1}{35} M`): sympy's evalf recurses without end on it."""
    return any(isinstance(a, (MatrixBase, MatrixExpr)) for a in sympy.preorder_traversal(expr))


def _rational(expr) -> sympy.Rational | None:
    """The exact value of a rational constant (`2^{1009}+1`, `\\frac{6}{4}`), else None."""
    if not isinstance(expr, sympy.Expr) or expr.free_symbols or _has_matrix(expr):
        return None
    if not expr.is_rational:
        return None
    value = expr.doit()
    return value if isinstance(value, sympy.Rational) else None


def _constant_value(expr) -> complex | None:
    """The value of an expression without free symbols, else None."""
    if not isinstance(expr, sympy.Expr) or expr.free_symbols or _has_matrix(expr):
        return None
    try:
        value = complex(sympy.N(expr, 30))
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        return None
    if value != value or abs(value) == float("inf"):
        return None
    return value


def _numeric_statement(expr) -> bool:
    """A relation without variables, such as a computed determinant `|M| = 113`."""
    return isinstance(expr, Relational) and not expr.free_symbols


def _same(a, b) -> bool:
    try:
        return bool(verify(a, b, strict=True, timeout_seconds=None))
    except Exception:
        return False


def leaf_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict on two canonical answers; constants compared by value."""
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    g, p = gold_parsed[0], pred_parsed[0]
    if isinstance(g, BooleanAtom) or isinstance(p, BooleanAtom):
        return False  # a statement sympy evaluated to True/False (`B^{-1} = [matrix]`)
    if _numeric_statement(g) and _numeric_statement(p):
        # `|M| = 113`: two true statements are not the same answer; compare side by side.
        return type(g) is type(p) and _same(p.lhs, g.lhs) and _same(p.rhs, g.rhs)
    exact_g, exact_p = _rational(gold_parsed[0]), _rational(pred_parsed[0])
    if exact_g is not None and exact_p is not None:
        return exact_g == exact_p  # integers and fractions are exact: 2^{1009}+1 is not 2^{1009}
    g, p = _constant_value(gold_parsed[0]), _constant_value(pred_parsed[0])
    if g is not None and p is not None:
        return abs(g - p) <= _TOL * max(abs(g), abs(p)) or g == p
    if _verify(list(gold_parsed), list(pred_parsed)):
        return True
    # Quantities are positive unless said otherwise: `\\sqrt{4 r_0^2}` is `2 r_0`.
    g, p = gold_parsed[0], pred_parsed[0]
    if _plain_expression(g) and _plain_expression(p):
        return _verify(_positive(g), _positive(p))
    return False


def _verify(gold, pred) -> bool:
    try:
        return bool(
            verify(gold, pred, strict=True, allow_set_relation_comp=True, timeout_seconds=None)
        )
    except Exception:
        return False


def _plain_expression(expr) -> bool:
    return isinstance(expr, sympy.Expr) and bool(expr.free_symbols) and not _has_matrix(expr)


def _positive(expr):
    return expr.xreplace(
        {s: sympy.Symbol(s.name, positive=True) for s in expr.free_symbols if s.is_Symbol}
    )
