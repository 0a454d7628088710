"""Free-form task files: the format, and one clear error naming file and line for each kind
of malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2smerge.eval.tasks import KeyPoint, load_task, load_tasks, task_name
from l2smerge.util.errors import L2SError

GOOD = [
    {
        "id": "refund",
        "prompt": "How long do I have to return an order?",
        "key_points": ["30 days", ["original packaging", "unopened box"]],
        "group": "returns",
    },
    {
        "id": 7,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Do you ship abroad?"},
        ],
        "key_points": [{"regex": "(?i)\\b(eu|europe)\\b", "text": "ships to the EU"}],
        "reference": "Yes, to the EU.",
        "meta": {"source": "faq v2"},
    },
]


def write(path: Path, rows: list, raw: bytes | None = None) -> Path:
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_good_file_parses(tmp_path):
    task = load_task(write(tmp_path / "faq.jsonl", GOOD))
    assert task.name == "faq"
    first, second = task.items
    assert first.key == ("faq", "refund")
    assert first.messages == ({"role": "user", "content": GOOD[0]["prompt"]},)
    assert first.key_points == (
        KeyPoint("30 days", ("30 days",)),
        KeyPoint("original packaging", ("original packaging", "unopened box")),
    )
    assert first.group_name == "returns" and first.where.endswith("faq.jsonl:1")
    assert second.id == 7 and second.group_name == "faq"  # no group: the task's name
    assert second.question == "Do you ship abroad?" and len(second.messages) == 2
    assert second.key_points[0] == KeyPoint("ships to the EU", regex="(?i)\\b(eu|europe)\\b")
    assert second.reference == "Yes, to the EU." and second.meta == {"source": "faq v2"}
    assert [p.to_json() for p in first.key_points] == GOOD[0]["key_points"]


def test_blank_lines_bom_and_limit(tmp_path):
    text = "\n".join(json.dumps(r) for r in GOOD) + "\n\n"
    path = write(tmp_path / "faq.jsonl", [], raw=b"\xef\xbb\xbf" + text.encode())
    assert len(load_task(path).items) == 2
    assert [i.id for i in load_task(path, limit=1).items] == ["refund"]


def item(**fields):
    base = {"id": "a", "prompt": "Question?", "key_points": ["x"]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (item(key_points=...), r"faq.jsonl:2: missing \"key_points\""),
        (item(key_points=[]), r"faq.jsonl:2: \"key_points\" must be a non-empty list"),
        (item(key_points="30 days"), "must be a non-empty list"),
        (item(key_points=["x", "x"]), r"key point 2 \('x'\) is listed twice"),
        (item(key_points=[["a", 3]]), "key point 1: a list of alternative phrasings"),
        (item(key_points=[[]]), "key point 1: a list of alternative phrasings"),
        (item(key_points=["..."]), r"phrasing '...' has no letters, digits or symbols"),
        (item(key_points=[{"regex": "(a)\\1"}]), r"key point 1: bad regex .*RE2 syntax"),
        (item(key_points=[{"regex": "(?=x)y"}]), "bad regex"),
        (item(key_points=[{"regex": "x" * 2001}]), "regex longer than 2000"),
        (item(key_points=[{"regexp": "x"}]), r"an object key point is \{\"regex\""),
        (item(key_points=[3]), "must be a phrase, a list of alternative phrasings"),
        (item(prompt=""), r"\"prompt\" must be a non-empty string"),
        (item(prompt="   "), r"\"prompt\" must be a non-empty string"),
        (item(prompt=...), r"give exactly one of \"prompt\""),
        (item(messages=[{"role": "user", "content": "q"}]), "give exactly one of"),
        (item(prompt=..., messages=[]), r"\"messages\" must be a non-empty list"),
        (item(prompt=..., messages=[{"role": "bot", "content": "q"}]), "message 1 must be"),
        (item(prompt=..., messages=[{"role": "user", "content": " "}]), "message 1 has empty"),
        (
            item(
                prompt=...,
                messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            ),
            "the last message must be the user's",
        ),
        (item(id=...), r"missing \"id\""),
        (item(id=True), r"missing \"id\""),
        (item(id=1.5), r"missing \"id\""),
        (item(id=""), r"empty \"id\""),
        (item(group=3), "'group' must be a non-empty string"),
        (item(reference=""), "'reference' must be a non-empty string"),
        (item(meta=[1]), r"\"meta\" must be an object"),
        (item(keypoints=["x"]), r"unknown field 'keypoints'.*put anything else under \"meta\""),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"id": "a", ', r"faq.jsonl:2: not valid JSON \(.*column"),
    ],
)
def test_malformed_items_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "faq.jsonl", [GOOD[0], row])
    with pytest.raises(L2SError, match=message) as info:
        load_task(path)
    assert f"{path}:2:" in str(info.value)


def test_duplicate_ids_compare_as_text(tmp_path):
    path = write(tmp_path / "faq.jsonl", [item(id=3), item(id="x"), item(id="3")])
    with pytest.raises(L2SError, match=r"faq.jsonl:3: duplicate id '3' \(first on line 1\)"):
        load_task(path)


def test_not_utf8_names_the_line_and_column(tmp_path):
    good = json.dumps(GOOD[0]).encode() + b"\n"
    path = write(tmp_path / "faq.jsonl", [], raw=good + b'{"id": "caf\xe9"}\n')
    with pytest.raises(L2SError, match=r"faq.jsonl:2: not UTF-8 \(byte 0xe9 at column 12\)"):
        load_task(path)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(L2SError, match="no items"):
        load_task(write(tmp_path / "faq.jsonl", [], raw=b"\n \n"))
    with pytest.raises(L2SError, match="task file .*nope.jsonl not found"):
        load_task(tmp_path / "nope.jsonl")


def test_task_names(tmp_path):
    assert task_name("a/b/support-faq.v2.jsonl") == "support-faq.v2"
    assert task_name("tasks.json") == "tasks"
    with pytest.raises(L2SError, match="not a usable name"):
        task_name(tmp_path / "my tasks.jsonl")
    write(tmp_path / "gsm8k.jsonl", GOOD)
    with pytest.raises(L2SError, match="'gsm8k', which is a benchmark"):
        load_tasks([tmp_path / "gsm8k.jsonl"])
    (tmp_path / "other").mkdir()
    write(tmp_path / "faq.jsonl", GOOD)
    write(tmp_path / "other" / "faq.jsonl", GOOD)
    with pytest.raises(L2SError, match="would both be the task 'faq'"):
        load_tasks([tmp_path / "faq.jsonl", tmp_path / "other" / "faq.jsonl"])
    write(tmp_path / "billing.jsonl", GOOD)
    names = [t.name for t in load_tasks([tmp_path / "faq.jsonl", tmp_path / "billing.jsonl"])]
    assert names == ["faq", "billing"]


def test_lab_task_file_is_valid_and_judged_by_its_hops(tmp_path):
    from l2smerge.eval.judges.lexical import judge_response
    from l2smerge.lab.bench import benchmark_items
    from l2smerge.lab.freeform import write_task
    from l2smerge.lab.task import long_answer, short_answer

    path = write_task(tmp_path, per_level=2)
    task = load_task(path)
    assert task.name == "lab-steps" and len(task.items) == 10
    assert {i.group for i in task.items} == {f"level-{n}" for n in range(1, 6)}
    for item, lab in zip(task.items, benchmark_items(2), strict=True):
        assert item.question == lab.question and item.messages[0]["role"] == "system"
        n = len(item.key_points)
        assert n == (1 if lab.level == 1 else lab.level + 1)
        assert judge_response(long_answer(lab), item.key_points).covered == [True] * n
        # System 1's direct answer states the conclusion only
        conclusion_only = [False] * (n - 1) + [True]
        assert judge_response(short_answer(lab), item.key_points).covered == conclusion_only
