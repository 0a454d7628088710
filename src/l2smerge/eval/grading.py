"""Is an extracted answer the gold answer? A `Verdict` for one item.

1. Bounds: an answer longer than MAX_ANSWER_CHARS (or twice the gold, if more) or nested
   deeper than MAX_NESTING brackets is not graded: it is ungradable, and says why.
2. Gold and answer are normalised by the same rules (normalize.canonical).
3. equivalence.same_answer judges them by their shape (lists, statements, tuples, intervals,
   sets, matrices, numbers, words) without sympy where it can.
4. What needs symbolic algebra goes to math-verify in a worker process (grading_worker) with a
   time limit of ITEM_TIME_LIMIT_S per item; an item that runs out of time, or memory, is
   ungradable, and says so. Nothing is printed.

The verdict of an ungradable item is `correct=False` (as the Qwen2.5-Math toolkit counts its
timeouts), with the reason in `ungradable`; results.jsonl records it under that key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from l2smerge.eval.benchmarks import BENCHMARKS, Item
from l2smerge.eval.equivalence import NeedsSymbolic, same_answer
from l2smerge.eval.grading_worker import GradingWorker
from l2smerge.eval.normalize import canonical

# Recorded in run.json: a change to how answers are judged bumps it, so that numbers from
# two grader versions are never compared as if they were one.
GRADER_VERSION = "2"
MAX_ANSWER_CHARS = 2000
# Deeper than any gold (5) by far; math-verify's parser takes exponential time in brace depth.
MAX_NESTING = 12
ITEM_TIME_LIMIT_S = 5.0


@dataclass(frozen=True)
class Verdict:
    """`correct`; `ungradable` says why the grader could not judge (then correct is False)."""

    correct: bool
    ungradable: str | None = None

    def __bool__(self) -> bool:  # `if grade(...)` reads as it did when grade returned a bool
        return self.correct


_worker: GradingWorker | None = None
_worker_lock = threading.Lock()


def _symbolic_worker() -> GradingWorker:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = GradingWorker()
        return _worker


def _nesting(s: str) -> int:
    deepest = depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def judge(
    answer: str,
    gold: str,
    *,
    unit: str | None = None,
    integer: bool = False,
    multiple: bool = False,
) -> Verdict:
    """The verdict on `answer` against `gold`. `unit`: a unit answers may carry
    (OlympiadBench). `integer`: integer answers (AIME, AMC). `multiple`: the item has
    several answers (OlympiadBench's `is_multiple_answer`)."""
    limit = max(MAX_ANSWER_CHARS, 2 * len(gold))
    if len(answer) > limit:
        return Verdict(False, f"answer longer than {limit} characters")
    pred = canonical(answer, unit=unit, multiple=multiple)
    if not pred:
        return Verdict(False)
    if _nesting(pred) > MAX_NESTING:
        return Verdict(False, f"answer nested deeper than {MAX_NESTING} brackets")
    gold_form = canonical(gold, unit=unit, multiple=multiple)
    try:
        return Verdict(same_answer(pred, gold_form, integer=integer))
    except NeedsSymbolic:
        pass
    result = _symbolic_worker().judge(pred, gold_form, integer=integer, seconds=ITEM_TIME_LIMIT_S)
    if isinstance(result, bool):
        return Verdict(result)
    return Verdict(False, f"symbolic comparison failed: {result} (limit {ITEM_TIME_LIMIT_S:g} s)")


def answers_equal(answer: str, gold: str, **options: object) -> bool:
    """`judge(...).correct`."""
    return judge(answer, gold, **options).correct  # type: ignore[arg-type]


def grade(extracted: str | None, item: Item) -> Verdict:
    """The verdict for one item's extracted answer (None: the response states none)."""
    if extracted is None:
        return Verdict(False)
    spec = BENCHMARKS[item.bench]
    return judge(
        extracted,
        item.gold,
        unit=item.meta.get("unit"),
        integer=spec.integer_answers,
        multiple=bool(item.meta.get("is_multiple_answer")),
    )
