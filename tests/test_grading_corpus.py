"""The grading corpus: (bench, class, verdict, gold, response) cases a careful human grader
agrees with, across the seven benchmarks and the answer formats that graders get wrong.
Each case is extracted and graded as `l2smerge eval` does it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from l2smerge.eval.benchmarks import SEVEN_BENCHMARKS, Item
from l2smerge.eval.extraction import extract_answer
from l2smerge.eval.grading import grade

CORPUS = Path(__file__).parent / "data" / "grading_corpus.yaml"
CASES = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
# The classes of issue 10 (and the ones found while building the grader) must all be there.
REQUIRED_CLASSES = {
    "equation", "units", "unit-letter", "matrix", "dollars", "thousands", "tuple",
    "e-notation", "minerva-ending", "subscript", "interval", "set", "pm", "degrees",
    "percent", "pi", "frac", "text", "choice", "multiple", "near-miss", "label",
    "inequality", "mixed-number", "word-number", "complex", "integer", "extraction",
}  # fmt: skip


def _item(case: list) -> Item:
    bench, _, _, gold, _ = case[:5]
    options = case[5] if len(case) > 5 else {}
    meta = {}
    if "unit" in options:
        meta["unit"] = options["unit"]
    if options.get("multiple"):
        meta["is_multiple_answer"] = True
    return Item(bench, 0, "question", gold, None, meta)


def test_corpus_covers_every_benchmark_and_class():
    assert len(CASES) >= 400
    benches = Counter(c[0] for c in CASES)
    assert set(benches) == set(SEVEN_BENCHMARKS)
    assert min(benches.values()) >= 40
    classes = Counter(c[1] for c in CASES)
    assert REQUIRED_CLASSES <= set(classes), REQUIRED_CLASSES - set(classes)
    assert min(classes[c] for c in REQUIRED_CLASSES) >= 3
    for bench in SEVEN_BENCHMARKS:  # right and wrong answers in every benchmark
        assert {c[2] for c in CASES if c[0] == bench} == {True, False}


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[f"{i:03d}-{c[0]}-{c[1]}-{'right' if c[2] else 'wrong'}" for i, c in enumerate(CASES)],
)
def test_corpus_case(case):
    _, _, verdict, gold, response = case[:5]
    extracted = extract_answer(response)
    result = grade(extracted, _item(case))
    assert result.ungradable is None, result.ungradable
    assert result.correct is verdict, f"gold {gold!r}, extracted {extracted!r}"
