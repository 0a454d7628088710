"""The lab's free-form task `lab-steps`: the lab benchmark's questions, judged not by the
boxed answer but by the key points a response writes out, the hops of the query chain
(`n=a`, `a=q`, `q=W`) and its conclusion (`n=W`). System 2 writes every hop; System 1 only the
conclusion; a merge that shortens the answer shows which hops it drops (docs/tasks.md).

Built from `lab.task` (items, `walk`) and `lab.bench` (the test items), so it follows
whatever pair and notation are bundled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from l2smerge.eval.prompts import COT_SYSTEM
from l2smerge.lab.bench import TEST_PER_LEVEL, benchmark_items
from l2smerge.lab.task import Item, long_answer, walk
from l2smerge.util.atomic import write_jsonl_atomic

TASK_NAME = "lab-steps"


def key_points(item: Item) -> list[str]:
    """Each hop of the query chain as the pair writes it, then the conclusion (which is the
    only hop at level 1)."""
    chain = item.chain
    hops = [walk(chain[i : i + 2]) for i in range(len(chain) - 1)]
    conclusion = walk((chain[0], item.answer))
    return hops if conclusion in hops else [*hops, conclusion]


def task_records(per_level: int = TEST_PER_LEVEL) -> list[dict[str, Any]]:
    """The task file's lines: ids are the lab benchmark's (0-based line numbers), groups
    its levels."""
    return [
        {
            "id": index,
            "messages": [
                {"role": "system", "content": COT_SYSTEM},  # as the pair is trained
                {"role": "user", "content": item.question},
            ],
            "key_points": key_points(item),
            "group": f"level-{item.level}",
            "reference": long_answer(item),
        }
        for index, item in enumerate(benchmark_items(per_level))
    ]


def write_task(directory: Path, per_level: int = TEST_PER_LEVEL) -> Path:
    """Write `<directory>/lab-steps.jsonl`."""
    return write_jsonl_atomic(Path(directory) / f"{TASK_NAME}.jsonl", task_records(per_level))
