"""The lexical judge on hand-written cases: paraphrase lists, number formats, Unicode, whole
words, regex key points (RE2: linear time on hostile input)."""

from __future__ import annotations

import pytest

from l2smerge.eval.judges import COVERED, MISSED, JudgeRequest, make_judge
from l2smerge.eval.judges.lexical import MAX_INPUT_CHARS, judge_response, normalize
from l2smerge.eval.tasks import KeyPoint


def phrase(*phrasings: str) -> KeyPoint:
    return KeyPoint(phrasings[0], tuple(phrasings))


def covered(response: str, *phrasings: str) -> bool:
    return judge_response(response, [phrase(*phrasings)]).covered == [True]


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Refunds within 30 days!", "refunds within 30 days"),
        ("It costs $1,000.50.", "it costs $ 1000.5"),
        ("0.50 vs .5 vs 2.0 vs 007", "0.5 vs 5 vs 2 vs 7"),
        ("１２，０００ ＵＳＤ", "12000 usd"),  # fullwidth digits, comma, letters (NFKC)
        ("Straße", "strasse"),  # case folding
        ("٣ items", "3 items"),  # Arabic-Indic digit
        ("x \u22125 and -5 and 10-20", "x -5 and -5 and 10 20"),  # minus sign, ranges
        ("COVID-19, 5kg, 50%", "covid 19 5 kg 50 %"),
        ("zero\u200bwidth soft\u00adhyphen", "zerowidth softhyphen"),
        ("don’t  \t\n stop…", "don t stop"),
        ("退货期限为30天", "退 货 期 限 为 30 天"),
        ("1,000,000 and 12,34 and -0.0", "1000000 and 12 34 and 0"),
    ],
)
def test_normalize(text, normal):
    assert normalize(text) == normal


@pytest.mark.parametrize(
    ("response", "phrasings", "expected"),
    [
        # paraphrase lists: any phrasing counts
        ("Keep the box unopened.", ("original packaging", "box unopened"), True),
        ("Keep the box.", ("original packaging", "box unopened"), False),
        # case, punctuation and spacing
        ("You have THIRTY   days, to return it.", ("thirty days",), True),
        ("Call us at: support-desk.", ("support desk",), True),
        # whole words and whole numbers only
        ("Our category page", ("cat",), False),
        ("Within 300 days", ("30 days",), False),
        ("Within 30 days", ("30 days",), True),
        ("Version 2.50 is out", ("2.5",), True),
        # number formats
        ("The limit is 1000 euros.", ("1,000 euros",), True),
        ("The limit is 1,000 euros.", ("1000 euros",), True),
        ("A fee of 0.5 percent", ("0.50 percent",), True),
        ("It weighs 5 kg.", ("5kg",), True),
        ("Temperatures of -5 degrees", ("5 degrees",), False),  # the sign counts
        ("Temperatures of -5 degrees", ("-5 degrees",), True),
        ("Temperatures of 5 degrees", ("-5 degrees",), False),
        ("A 50% discount", ("50 %",), True),
        ("A 50 percent discount", ("50%",), False),
        # Unicode
        ("ＲＥＦＵＮＤ ＷＩＴＨＩＮ ３０ ＤＡＹＳ", ("refund within 30 days",), True),
        ("die Straße ist gesperrt", ("STRASSE",), True),
        ("Café closed", ("CAFÉ",), True),
        ("Cafe\u0301 closed", ("café",), True),  # combining accent composed by NFKC
        ("Cafe closed", ("café",), False),  # accents are kept
        ("退货期限为30天。", ("30天",), True),
        ("退货期限为30天。", ("退货",), True),
        ("退货期限为30天。", ("期限为40天",), False),
    ],
)
def test_phrasings(response, phrasings, expected):
    assert covered(response, *phrasings) is expected


def test_regex_key_points_and_evidence():
    points = [
        KeyPoint("order number", regex=r"\b[A-Z]{2}-\d{6}\b"),
        KeyPoint("says sorry", regex=r"(?i)\b(sorry|apologi[sz]e)\b"),
        KeyPoint("case matters", regex=r"EU"),
        phrase("30 days", "thirty days"),
    ]
    judgement = judge_response(
        "We APOLOGIZE: order ＡＢ-123456 ships in the eu in thirty days.", points
    )
    assert judgement.covered == [True, True, False, True]
    assert [v.status for v in judgement.verdicts] == [COVERED, COVERED, MISSED, COVERED]
    # regex runs on the NFKC text: the fullwidth order number reads as ASCII
    assert [v.evidence for v in judgement.verdicts] == [
        "AB-123456",
        "APOLOGIZE",
        None,
        "thirty days",
    ]
    assert judgement.requests == 0 and judgement.error is None


def test_regex_is_linear_time_on_hostile_input():
    # catastrophic backtracking for a backtracking engine; RE2 answers at once
    evil = KeyPoint("evil", regex=r"(a+)+$")
    judgement = judge_response("a" * 50_000 + "!", [evil])
    assert judgement.covered == [False]


def test_input_bound():
    response = "x " * (MAX_INPUT_CHARS // 2) + "tail point"
    judgement = judge_response(response, [phrase("x x"), phrase("tail point")])
    assert judgement.covered == [True, False] and judgement.input_truncated
    assert not judge_response("tail point", [phrase("tail point")]).input_truncated


def test_judge_interface_is_deterministic_and_in_order():
    judge = make_judge("lexical")
    points = (phrase("30 days"), phrase("receipt", "proof of purchase"))
    requests = [
        JudgeRequest("Return within 30 days with a receipt.", points),
        JudgeRequest("Bring proof of purchase.", points),
        JudgeRequest("", points),
    ]
    first = list(judge.judge(requests))
    assert first == list(judge.judge(requests))
    assert [(i, j.covered) for i, j in first] == [
        (0, [True, True]),
        (1, [False, True]),
        (2, [False, False]),
    ]
    assert judge.info() == {"judge": "lexical"}
