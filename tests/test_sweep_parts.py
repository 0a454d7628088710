"""The sweep's parts alone, on plain data: the store, the local runner, the choice."""

import json

import pytest

from l2smerge.choose.sweep_choice import front_and_choice, pareto
from l2smerge.choose.sweep_runner import LocalRunner
from l2smerge.choose.sweep_spec import Point, parse_sweep
from l2smerge.choose.sweep_store import PointStore
from l2smerge.util.errors import L2SError


def _record(label, accuracy, tokens, *, coverage=None, source="list"):
    record = {"id": label, "label": label, "source": source, "accuracy": accuracy,
              "accuracy_ci95": [accuracy - 0.1, accuracy + 0.1], "mean_tokens": tokens,
              "vs_reference": None}  # fmt: skip
    if coverage is not None:
        record.update(coverage=coverage, coverage_ci95=[0, 1], coverage_mean_tokens=tokens / 2)
    return record


def _spec(tmp_path, evaluate=None, **selection):
    data = {"models": ["a"], "points": [{"method": "average"}]}
    data["eval"] = evaluate or {"benches": ["gsm8k"]}
    return parse_sweep({**data, "selection": selection}, tmp_path / "s.yaml")


def test_front_and_choice_from_records_alone(tmp_path):
    records = [_record("long", 0.9, 900), _record("short", 0.8, 300), _record("worse", 0.7, 400)]
    front, selection = front_and_choice(records, _spec(tmp_path), None)
    assert set(front["front"]) == {"long", "short"}  # "worse" is longer and less accurate
    assert [p["id"] for p in front["points"]] == ["short", "worse", "long"]  # by tokens
    assert front["reference"] is None
    assert selection["rule"] == "most_accurate" and selection["chosen"] == "long"
    assert "macro accuracy" in front["objectives"]


def test_choice_on_coverage_weighs_coverage_and_its_tokens(tmp_path):
    records = [_record("a", 0.9, 900, coverage=0.5), _record("b", 0.5, 300, coverage=0.8)]
    spec = _spec(tmp_path, {"tasks": ["faq.jsonl"]})  # tasks only: weighs coverage
    front, selection = front_and_choice(records, spec, None)
    assert selection["chosen"] == "b" and front["front"] == ["b"]
    assert {p["id"]: p["mean_tokens"] for p in front["points"]} == {"a": 450, "b": 150}
    assert pareto([], None)["front"] == []


def test_store_round_trip_and_a_bad_line_named(tmp_path):
    store = PointStore(tmp_path)
    store.add(_record("p1", 0.5, 10))
    store.add(_record("t1", 0.6, 20, source="search"))
    store.add({**_record("p1", 0.7, 10)})  # a point recorded again replaces its record
    again = PointStore(tmp_path)
    assert len(again) == 2 and again["p1"]["accuracy"] == 0.7
    points = [Point("average", {})]
    assert [r["id"] for r in again.of_sweep(points, searching=True)] == ["t1"]
    assert again.of_sweep(points, searching=False) == []
    (tmp_path / "points.jsonl").write_text(json.dumps({"id": "x"}) + "\n[1]\n")
    with pytest.raises(L2SError, match=r"points.jsonl:2: not a points.jsonl record"):
        PointStore(tmp_path)


def test_local_runner_announces_each_point_and_names_a_failing_one(tmp_path):
    calls, started = [], []

    def task(spec_data, key, point_dir, progress):
        calls.append((key["parameters"], point_dir, progress))
        if key["parameters"]["alpha"] > 1:
            raise L2SError("alpha too large")
        return {"run_dir": point_dir}

    runner = LocalRunner(task, {}, tmp_path, progress=True)
    good, bad = Point("task_arithmetic", {"alpha": 0.5}), Point("task_arithmetic", {"alpha": 2})
    done = list(runner.run([good], started.append))
    assert done == [(good, {"run_dir": str(tmp_path / "points" / good.id)})]
    assert started == [good] and calls[0][2] is True
    with pytest.raises(L2SError, match=r"^sweep point task_arithmetic\(alpha=2\): alpha too"):
        list(runner.run([bad]))
