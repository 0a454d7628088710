"""Answer extraction, normalisation and grading on plain data; the bounds on hostile answers
(length, nesting, time, silence); how an ungradable item appears in results.jsonl. The
grading corpus (tests/data/grading_corpus.yaml) is graded by test_grading_corpus.py."""

from __future__ import annotations

import json
import time

import pytest

from l2smerge.eval import evaluate, grading
from l2smerge.eval.benchmarks import Item, load_items
from l2smerge.eval.extraction import extract_answer, last_boxed
from l2smerge.eval.grading import GRADER_VERSION, Verdict, answers_equal, grade, judge
from l2smerge.eval.normalize import canonical
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
        # A box cut off by the token limit: what follows it, as the toolkit reads it.
        ("cut off inside \\boxed{\\frac{1}{", "\\frac{1}{"),
        # Minerva's few-shot ending comes first, whatever X is.
        ("Final Answer: The final answer is $E_1, E_2$. I hope it is correct.", "E_1, E_2"),
        ("\\boxed{3} Final Answer: The final answer is m. I hope it is correct.", "m"),
        # `\{` and `\}` are characters, not a group.
        ("\\boxed{\\left\\{ x \\right. \\text{if } y}", "\\left\\{ x \\right. \\text{if } y"),
        # Boxes side by side are one list; boxes in different sentences are not.
        ("$x=\\boxed{2}$ or $x=\\boxed{3}$.", "2, 3"),
        ("(a) \\boxed{2}. (b) \\boxed{3}", "3"),
        ("\\boxed{5} \\boxed{5}", "5"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_last_boxed_none_without_box():
    assert last_boxed("nothing here") is None


@pytest.mark.parametrize(
    "answer, form",
    [
        ("3 \\text{ bolts}", "3"),
        ("864 \\mbox{ inches}^2", "864"),
        ("10 \\mathrm{~km}/\\mathrm{h}", "10"),
        ("166 \\mathrm{~cm}^2", "166"),
        ("1.5 \\text{ eV}", "1.5"),
        ("45 minutes", "45"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),  # words with nothing before them are the answer
        ("\\mathrm{h}=\\mathrm{gi}", "h=gi"),  # roman letters after "=" are not a unit
        ("2 n", "2n"),  # one letter is never a unit by itself
        ("\\$32,\\!348", "32348"),
        ("\\32,\\!348", "32348"),  # a reader stripped `$` from `\$`
        ("1,450,000", "1450000"),
        ("(3,331)", "(3,331)"),
        ("5, 100", "5,100"),
        ("\\begin{pmatrix} a \\\\ b \\end{pmatrix}", "\\begin{pmatrix}a\\\\b\\end{pmatrix}"),
        (
            "\\left[\\begin{array}{rr}1 & 2\\end{array}\\right]",
            "[\\begin{pmatrix}1&2\\end{pmatrix}]",
        ),
        ("-1./3", "-1/3"),
        ("4.4e7", "4.4\\times10^{7}"),
        ("E_1", "E_{1}"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\sqrt[3]{x}", "\\sqrt[3]{x}"),
        ("90^\\circ", "90"),
        ("np.arcsin(10/13)", "\\arcsin(10/13)"),
        ("\\text{Answer: } 42", "42"),
    ],
)
def test_canonical_forms(answer, form):
    assert canonical(answer) == form


def test_multiple_answers_keep_their_commas():
    assert canonical("100,200") == "100200"
    assert canonical("100,200", multiple=True) == "100,200"


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.5", "\\frac{1}{2}"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("[1,3)", "[1, 3)"),
        ("(-\\infty, 2] \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)"),
        ("Evelyn", "\\text{Evelyn}"),
        ("C", "\\text{(C)}"),
        ("20", "20\\%"),
        ("0.2", "20\\%"),
        ("x = 3", "3"),
        ("4.5e33", "4.5 \\times 10^{33}"),
        ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0"),  # an equation, judged whole
    ],
)
def test_equivalent_forms(pred, gold):
    assert answers_equal(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.6", "\\frac{1}{2}"),
        ("(1,3]", "[1,3)"),
        ("70001", "70000"),  # integers are exact
        ("5.4e-9", "5.3e-9"),  # no rounding to 6 decimals
        ("2^{1009}+1", "2^{1009}"),
        ("\\frac{37}{4}", "\\frac{37}{4} m"),  # m is a variable in the gold
        ("5x-7y+11z-4=0", "5x - 7y + 11z + 4 = 0"),  # not judged by its right-hand side
        ("1,3", "1,3,5"),
        ("", "3"),
    ],
)
def test_different_answers(pred, gold):
    assert not answers_equal(pred, gold)


def test_item_options_come_from_the_benchmark():
    olympiad = Item("olympiadbench", 0, "q", "100,200", None, {"is_multiple_answer": True})
    assert grade("200, 100", olympiad).correct
    assert not grade("100200", olympiad).correct
    with_unit = Item("olympiadbench", 1, "q", "\\frac{600}{7}", None, {"unit": "km/h"})
    assert grade("\\frac{600}{7} km/h", with_unit).correct
    aime = Item("aime24", 0, "q", "025", None, {})
    assert grade("25", aime).correct
    assert not grade("25.5", aime).correct
    assert grade(None, aime) == Verdict(False)


def test_grader_version_is_a_string():
    assert isinstance(GRADER_VERSION, str) and GRADER_VERSION


def test_gold_reader_keeps_a_dollar_sign(data_dir):
    golds = {it.gold for it in load_items("math500", data_dir)}
    assert "\\$32,\\!348" in golds


# --- Hostile answers: bounded in length, nesting and time; nothing printed -----------------

ADVERSARIAL = {
    "spaces in a box": "\\boxed{U" + " " * 100_000 + "x}",
    "deep braces": "\\boxed{" + "{" * 50_000 + "x" + "}" * 50_000 + "}",
    "deep parentheses": "\\boxed{" + "(" * 50_000 + "x" + ")" * 50_000 + "}",
    "digits": "\\boxed{" + "7" * 100_000 + "}",
    "bare digits": "7" * 100_000,
    "many fractions": "\\boxed{" + "\\frac{1}{2}" * 9_000 + "}",
    "unit words": "\\boxed{5" + " \\text{ cm}" * 9_000 + "}",
    "open boxes": "\\boxed{" * 14_000,
    "answer phrases": "The answer is " * 7_000,
    "commas": "\\boxed{" + "1," * 50_000 + "}",
    "backslashes": "\\" * 100_000,
    "side by side": "\\boxed{1} " * 10_000,
}


@pytest.fixture(scope="module")
def started_worker():
    """The symbolic worker, started: its start (importing sympy) is not an item's time."""
    assert judge("(x+1)^2", "x^2+2x+1").correct


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_answers_are_graded_at_once(name, started_worker):
    item = Item("math500", 0, "q", "x", None, {})
    start = time.perf_counter()
    verdict = grade(extract_answer(ADVERSARIAL[name]), item)
    elapsed = time.perf_counter() - start
    assert not verdict.correct
    assert elapsed < 1.0, f"{name}: {elapsed:.2f} s"


def test_long_answer_is_ungradable_and_says_why():
    verdict = judge("1" * 5_000, "1")
    assert verdict == Verdict(False, "answer longer than 2000 characters")


def test_deep_nesting_is_ungradable_and_says_why():
    verdict = judge("(" * 13 + "1" + ")" * 13, "1")
    assert not verdict.correct and "nested deeper" in verdict.ungradable


def test_symbolic_time_limit_marks_the_item_and_the_worker_recovers(monkeypatch, capfd):
    monkeypatch.setattr(grading, "ITEM_TIME_LIMIT_S", 1.0)
    # A 370-million-digit integer: sympy would compute it for minutes.
    verdict = judge("9^{9^{9^{9}}}+x", "x")
    assert not verdict.correct
    assert verdict.ungradable and "timeout" in verdict.ungradable
    assert judge("(x+1)^2", "x^2+2x+1") == Verdict(True)  # a fresh worker took over
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_ungradable_item_is_recorded_in_results(data_dir, tmp_path):
    replay = tmp_path / "replay.jsonl"
    rows = [
        {"bench": "gsm8k", "id": 0, "response": "\\boxed{" + "9" * 5_000 + "}"},
        {"bench": "gsm8k", "id": 1, "response": "\\boxed{3}"},
    ]
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = evaluate(
        "hostile",
        "gsm8k",
        out_dir=tmp_path / "run",
        backend="replay",
        responses=replay,
        data_dir=data_dir,
        progress=False,
    )
    lines = {
        r["id"]: r
        for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())
    }
    assert lines[0]["correct"] is False
    assert lines[0]["ungradable"] == "answer longer than 2000 characters"
    assert lines[1]["correct"] is True and "ungradable" not in lines[1]
    assert summary["benchmarks"]["gsm8k"]["accuracy"] == 0.5
    assert summary["benchmarks"]["gsm8k"]["ungradable"] == 1
    assert summary["average"]["ungradable"] == 1


def test_eval_says_how_many_responses_were_ungradable(data_dir, tmp_path):
    from typer.testing import CliRunner

    from l2smerge.cli import app

    replay = tmp_path / "replay.jsonl"
    rows = [{"bench": "gsm8k", "id": i, "response": "\\boxed{" + "(" * 40 + "}"} for i in (0, 1)]
    rows.append({"bench": "gsm8k", "id": 2, "response": "\\boxed{3}"})
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "hostile", "--backend", "replay", "--responses", str(replay)]
    args += ["--bench", "gsm8k", "--limit", "3", "--data-dir", str(data_dir)]
    args += ["-o", str(tmp_path / "run"), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 response(s) could not be graded" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["benchmarks"]["gsm8k"]["ungradable"] == 2


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
