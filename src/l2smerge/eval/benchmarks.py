"""The benchmarks: where each one's question is, how its gold answer is read, which metadata
is kept. Data lives in `<data_dir>/<bench>/test.jsonl`; an item is named by its bench and its
0-based line number in that file."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import iter_jsonl

DATA_DIR_ENV = "L2SMERGE_DATA_DIR"


@dataclass(frozen=True)
class Item:
    """One benchmark question with its gold answer, named by (bench, id)."""

    bench: str
    id: int
    question: str
    gold: str
    level: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.bench, self.id)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as data: the question field, a gold-answer reader and the kept metadata."""

    name: str
    question_field: str
    gold: Callable[[dict[str, Any]], str]
    level_field: str | None = None
    meta_fields: tuple[str, ...] = ()
    # Integer answers (AIME, AMC): "025" and "25.0" both mean 25.
    integer_answers: bool = False
    # OlympiadBench: the unit a response may append to its answer.
    unit_field: str | None = None
    # The prompt `--prompt auto` gives it (eval/prompts.py).
    default_prompt: str = "qwen25-math-cot"


def _strip_dollars(text: str) -> str:
    """Drop the `$` math delimiters the Qwen2.5-Math data wraps answers in; a dollar sign
    `\\$` stays (`\\$32,\\!348`)."""
    return re.sub(r"(?<!\\)\$", "", text).strip()


def _gsm8k_gold(row: dict[str, Any]) -> str:
    return str(row["answer"]).split("####")[-1].strip().replace(",", "")


def _last_boxed_gold(row: dict[str, Any]) -> str:
    from l2smerge.eval.extraction import last_boxed

    boxed = last_boxed(str(row["solution"]))
    if boxed is None:
        raise KeyError("solution has no \\boxed{}")
    return boxed


def _olympiad_gold(row: dict[str, Any]) -> str:
    answers = row["final_answer"]
    if isinstance(answers, str):
        answers = [answers]
    return ", ".join(_strip_dollars(str(a)) for a in answers)


def _number_gold(row: dict[str, Any]) -> str:
    value = row["answer"]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _strip_dollars(str(value))


def _plain_gold(row: dict[str, Any]) -> str:
    return _strip_dollars(str(row["answer"]))


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gsm8k", "question", _gsm8k_gold),
        Benchmark("math500", "problem", _plain_gold, level_field="level", meta_fields=("subject",)),
        Benchmark("minerva_math", "problem", _last_boxed_gold, meta_fields=("type",)),
        Benchmark(
            "olympiadbench",
            "question",
            _olympiad_gold,
            meta_fields=("is_multiple_answer", "answer_type", "subfield"),
            unit_field="unit",
        ),
        Benchmark("college_math", "question", _plain_gold, meta_fields=("data_topic",)),
        Benchmark("aime24", "problem", _number_gold, integer_answers=True),
        Benchmark("amc23", "question", _number_gold, integer_answers=True),
        # The bundled toy task of `l2smerge lab` (see docs/lab.md); its models were trained on
        # their chat template.
        Benchmark("lab", "question", _plain_gold, level_field="level", default_prompt="chat"),
    )
}

# The study's six, plus AMC23 that the Qwen2.5-Math toolkit ships alongside them; `all`.
STUDY_BENCHMARKS = ("gsm8k", "math500", "minerva_math", "olympiadbench", "college_math", "aime24")
SEVEN_BENCHMARKS = (*STUDY_BENCHMARKS, "amc23")


def parse_bench_names(benches: str | list[str] | tuple[str, ...]) -> list[str]:
    """`"gsm8k,math500"` or a list -> validated names, order kept, duplicates dropped."""
    names = re.split(r"[,\s]+", benches) if isinstance(benches, str) else list(benches)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name == "all":  # the seven reasoning benchmarks (not the lab task)
            out.extend(b for b in SEVEN_BENCHMARKS if b not in out)
            continue
        if name not in BENCHMARKS:
            known = ", ".join(BENCHMARKS)
            raise L2SError(f"unknown benchmark {name!r}; known benchmarks: {known}")
        if name not in out:
            out.append(name)
    if not out:
        raise L2SError("no benchmark given; pass --bench gsm8k,math500,...")
    return out


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """`data_dir`, else $L2SMERGE_DATA_DIR; an error naming both when neither is set."""
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise L2SError(
                f"no benchmark data directory: pass --data-dir DIR or set {DATA_DIR_ENV}; "
                "DIR holds <bench>/test.jsonl for each benchmark (see docs/eval.md)"
            )
        data_dir = env
    return Path(data_dir).expanduser()


def bench_file(data_dir: Path, bench: str) -> Path:
    return data_dir / bench / "test.jsonl"


def load_items(bench: str, data_dir: str | Path | None, limit: int | None = None) -> list[Item]:
    """The items of one benchmark, in file order; `limit` keeps the first N."""
    spec = BENCHMARKS[parse_bench_names([bench])[0]]
    root = resolve_data_dir(data_dir)
    path = bench_file(root, bench)
    if not path.is_file():
        raise L2SError(
            f"benchmark data missing: {path} not found; put the {bench} test split there as "
            f"JSONL (one object per line with a {spec.question_field!r} field), or point "
            f"--data-dir / {DATA_DIR_ENV} at a directory laid out as <bench>/test.jsonl"
        )
    items: list[Item] = []
    for lineno, row in iter_jsonl(path):
        if limit is not None and len(items) >= limit:
            break
        items.append(_parse_row(spec, f"{path}:{lineno}", lineno - 1, row))
    return items


def _parse_row(spec: Benchmark, where: str, index: int, row: dict[str, Any]) -> Item:
    if not isinstance(row.get(spec.question_field), str):
        raise L2SError(f"{where}: missing text field {spec.question_field!r}")
    try:
        gold = spec.gold(row)
    except (KeyError, TypeError, IndexError) as exc:
        raise L2SError(f"{where}: cannot read the gold answer ({exc})") from None
    meta = {k: row[k] for k in spec.meta_fields if k in row}
    if spec.unit_field and row.get(spec.unit_field):
        meta["unit"] = row[spec.unit_field]
    level = row.get(spec.level_field) if spec.level_field else None
    return Item(spec.name, index, row[spec.question_field], gold, level, meta)
