"""Answer extraction and equivalence on plain data: no model, no files."""

import pytest

from l2smerge.eval.benchmarks import Item
from l2smerge.eval.extraction import extract_answer, last_boxed
from l2smerge.eval.grading import answers_equal, grade, normalize
from l2smerge.eval.reflection import count_reflections


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("nested \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed 5 is it", "5"),
        ("$\\framebox{204}$ minutes", "204"),
        ("The answer is 42.", "42"),
        ("Hence the final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("He makes 9 * 2 = $18.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("so we get 3 apples and then 1,200 pears", "1200"),
        ("no numbers at all", None),
        ("cut off inside \\boxed{\\frac{1}{", "1"),  # unbalanced box: last number
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_last_boxed_none_without_box():
    assert last_boxed("nothing here") is None


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.5", "\\frac{1}{2}"),  # fractions
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("1/2", "\\frac12"),
        ("2\\sqrt{2}", "\\sqrt{8}"),  # radicals
        ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
        ("[1,3)", "[1, 3)"),  # intervals
        ("(-\\infty, 2] \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)"),
        ("90^\\circ", "90"),  # degrees
        ("90", "90^{\\circ}"),
        ("30°", "30"),
        ("Evelyn", "\\text{Evelyn}"),  # text answers
        ("\\text{(C)}", "(C)"),
        ("C", "\\text{(C)}"),  # multiple choice letters
        ("\\$18.00", "18"),
        ("18 \\text{ dollars}", "18"),
        ("20", "20\\%"),
        ("1,000", "1000"),  # thousands separators
        ("1000", "1,000"),
        ("\\$18", "18"),  # dollars
        ("18 dollars", "18"),
        ("5 \\mathrm{~cm}", "5"),  # units
        ("x = 3", "3"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("10-4n", "10-4 n"),
        ("4.5e33", "4.5 \\times 10^{33}"),  # numbers in scientific notation
    ],
)
def test_equivalent_forms(pred, gold):
    assert answers_equal(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.6", "\\frac{1}{2}"),
        ("2\\sqrt{3}", "\\sqrt{8}"),
        ("(1,3]", "[1,3)"),
        ("Bob", "\\text{Evelyn}"),
        ("(B)", "\\text{(C)}"),
        ("100", "1,000"),
        ("1,3", "1,3,5"),
        ("", "3"),
    ],
)
def test_different_answers(pred, gold):
    assert not answers_equal(pred, gold)


def test_olympiad_multiple_answers_any_order():
    item = Item("olympiadbench", 0, "q", "(1,8,19), (2,7,13), (4,5,7)", None, {})
    assert grade("(4,5,7), (1,8,19), (2,7,13)", item)
    assert not grade("(4,5,7), (1,8,19)", item)
    listed = Item("olympiadbench", 1, "q", "-2, 0, 2", None, {"is_multiple_answer": True})
    assert grade("2, -2, 0", listed)
    assert not grade("2, 0", listed)


def test_olympiad_unit_is_ignored():
    item = Item("olympiadbench", 0, "q", "\\frac{600}{7}", None, {"unit": "km/h"})
    assert grade("\\frac{600}{7} km/h", item)
    assert grade("\\frac{600}{7}", item)
    assert not grade("\\frac{601}{7} km/h", item)


def test_aime_integers():
    item = Item("aime24", 0, "q", "025", None, {})
    assert grade("25", item)
    assert grade("025", item)
    assert grade("\\textbf{(25)}", item)
    assert not grade("24", item)
    assert not grade("25.5", item)
    amc = Item("amc23", 0, "q", "27", None, {})
    assert grade("27.0", amc)
    assert not grade("28", amc)


def test_missing_answer_is_wrong():
    assert not grade(None, Item("gsm8k", 0, "q", "18", None, {}))


def test_normalize_strips_wrappers():
    assert normalize("$\\text{ 1,000 dollars}$.") == "1000"


@pytest.mark.parametrize(
    "text, count",
    [
        ("Wait, let me check. WAIT. Let me just verify this. Recap:", 5),
        ("I double-check and re-examine; let me verify.", 3),
        ("awaited the answer, waiting", 0),
        ("plain answer", 0),
        ("Let me just check the sum, then let me check again", 2),
    ],
)
def test_reflection_keywords(text, count):
    assert count_reflections(text) == count


def test_statements_compared_by_their_value():
    gold = "\\lim _{n \\rightarrow \\infty} n^{2} /\\left(2 n^{2}+1\\right)=1 / 2"
    assert answers_equal("\\lim_{n \\to \\infty} n^2/(2n^2+1) = 0.5", gold)
    assert not answers_equal(
        "\\lim _{n \\rightarrow \\infty} n^{3} /\\left(3 n^{3}+2\\right)=2 / 3", gold
    )
