"""The A/B on free-form tasks: per item, the key points A covered and B dropped; a paired test
on coverage; the dropped points ranked by how often they are lost.

Only items judged in both runs (no judge error on either side) with the same key points
count; the others are counted apart. Coverage delta = mean over items of (coverage B −
coverage A). Its 95% interval is Tango's paired score interval (the one compare uses for
accuracy) with fractional counts: `gained` = Σ max(d, 0), `lost` = Σ max(−d, 0) over the
per-item differences d. A difference in [−1, 1] varies at most as much as a 0/1 one with the
same mean discordance, so the interval is conservative; with one key point per item it is
exactly Tango's, and like it, it keeps a width when the runs agree on every item. Macro over
tasks: MOVER, each task weighing the same. The p-value is a paired sign-flip permutation
test on the per-item differences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from l2smerge.choose.stats import (
    paired_difference_interval,
    sign_flip_p_value,
)
from l2smerge.eval.coverage import group_of
from l2smerge.eval.metrics import macro_interval

Pair = tuple[dict[str, Any], dict[str, Any]]


def is_freeform(record: dict[str, Any]) -> bool:
    """A results.jsonl line from a free-form task (it carries key points)."""
    return isinstance(record.get("key_points"), list)


def _covered(record: dict[str, Any]) -> set[str]:
    return set(record["covered_points"])


def _item_change(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    covered_a, covered_b = _covered(a), _covered(b)
    return {
        "task": a["bench"],
        "id": a["id"],
        "group": group_of(a),
        "coverage_a": a["coverage"],
        "coverage_b": b["coverage"],
        "dropped": [p for p in a["key_points"] if p in covered_a and p not in covered_b],
        "gained": [p for p in a["key_points"] if p in covered_b and p not in covered_a],
        "tokens_a": a.get("tokens"),
        "tokens_b": b.get("tokens"),
    }


def _split(pairs: list[Pair]) -> tuple[list[Pair], dict[str, int]]:
    """The comparable pairs, and counts of those left out and why."""
    usable: list[Pair] = []
    skipped = {"judge_error_a": 0, "judge_error_b": 0, "key_points_differ": 0}
    for a, b in pairs:
        if a.get("coverage") is None:
            skipped["judge_error_a"] += 1
        elif b.get("coverage") is None:
            skipped["judge_error_b"] += 1
        elif a["key_points"] != b["key_points"]:
            skipped["key_points_differ"] += 1
        else:
            usable.append((a, b))
    return usable, skipped


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def _describe(pairs: list[Pair]) -> dict[str, Any]:
    """Point figures for comparable pairs (no intervals)."""
    cov_a = np.array([a["coverage"] for a, _ in pairs], dtype=float)
    cov_b = np.array([b["coverage"] for _, b in pairs], dtype=float)
    changes = [_item_change(a, b) for a, b in pairs]
    n = len(pairs)
    return {
        "n": n,
        "mean_coverage_a": float(cov_a.mean()) if n else None,
        "mean_coverage_b": float(cov_b.mean()) if n else None,
        "delta": float((cov_b - cov_a).mean()) if n else None,
        "full_coverage_a": float(np.mean([bool(a["full_coverage"]) for a, _ in pairs]))
        if n
        else None,
        "full_coverage_b": float(np.mean([bool(b["full_coverage"]) for _, b in pairs]))
        if n
        else None,
        "points_dropped": sum(len(c["dropped"]) for c in changes),
        "points_gained": sum(len(c["gained"]) for c in changes),
        "items_with_drops": sum(bool(c["dropped"]) for c in changes),
        "mean_tokens_a": _mean([a.get("tokens") for a, _ in pairs]) if n else None,
        "mean_tokens_b": _mean([b.get("tokens") for _, b in pairs]) if n else None,
    }


def _deltas(pairs: list[Pair]) -> np.ndarray:
    return np.array([b["coverage"] - a["coverage"] for a, b in pairs], dtype=float)


def delta_interval(deltas: np.ndarray) -> list[float]:
    """95% interval of the mean coverage difference: Tango's with fractional counts."""
    gained = float(np.clip(deltas, 0, None).sum())
    lost = float(np.clip(-deltas, 0, None).sum())
    return list(paired_difference_interval(gained, lost, len(deltas)))  # type: ignore[arg-type]


def versus(pairs: list[Pair], seed: int = 0) -> dict[str, Any]:
    """Paired figures of comparable pairs with the delta's interval and p-value."""
    stats = _describe(pairs)
    deltas = _deltas(pairs)
    stats["delta_ci95"] = delta_interval(deltas) if len(pairs) else [-1.0, 1.0]
    stats["p_value"] = sign_flip_p_value([deltas], seed=seed) if len(pairs) else 1.0
    return stats


def dropped_ranking(pairs: list[Pair]) -> list[dict[str, Any]]:
    """Each key point B lost somewhere: in how many items A covered it and B did not
    (`lost`), out of the items where A covered it (`covered_by_a`); most often lost first."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for a, b in pairs:
        covered_a, covered_b = _covered(a), _covered(b)
        for point in a["key_points"]:
            row = table.setdefault(
                (a["bench"], point),
                {"task": a["bench"], "point": point, "lost": 0, "covered_by_a": 0, "items": 0},
            )
            row["items"] += 1
            if point in covered_a:
                row["covered_by_a"] += 1
                row["lost"] += point not in covered_b
    ranked = [r for r in table.values() if r["lost"]]
    for row in ranked:
        row["loss_rate"] = row["lost"] / row["covered_by_a"]
    return sorted(ranked, key=lambda r: (-r["lost"], -r["loss_rate"], r["task"], r["point"]))


def coverage_comparison(
    pairs: list[Pair],
    *,
    seed: int = 0,
    judge_differences: Sequence[str] = (),
) -> dict[str, Any]:
    """The coverage A/B on paired free-form records (A, B) of the same items.
    `judge_differences`: the runs' judge difference as eval.identity.protocol_differences
    words it (fields=("judge",)); coverage from two judges is not comparable, so the
    section points at it (compare.md's warning on top names it once)."""
    usable, skipped = _split(pairs)
    by_task: dict[str, list[Pair]] = {}
    by_group: dict[str, list[Pair]] = {}
    for pair in usable:
        by_task.setdefault(pair[0]["bench"], []).append(pair)
        by_group.setdefault(group_of(pair[0]), []).append(pair)
    tasks = {task: versus(task_pairs, seed) for task, task_pairs in by_task.items()}
    strata = [_deltas(p) for p in by_task.values()]
    average: dict[str, Any] = {
        "tasks": list(tasks),
        "n": len(usable),
        "mean_coverage_a": _mean([t["mean_coverage_a"] for t in tasks.values()]),
        "mean_coverage_b": _mean([t["mean_coverage_b"] for t in tasks.values()]),
        "delta": _mean([t["delta"] for t in tasks.values()]),
        "delta_ci95": (
            list(
                macro_interval(
                    [t["delta"] for t in tasks.values()],
                    [t["delta_ci95"] for t in tasks.values()],
                )
            )
            if tasks
            else [-1.0, 1.0]
        ),
        "p_value": sign_flip_p_value(strata, seed=seed) if strata else 1.0,
        "points_dropped": sum(t["points_dropped"] for t in tasks.values()),
        "points_gained": sum(t["points_gained"] for t in tasks.values()),
        "items_with_drops": sum(t["items_with_drops"] for t in tasks.values()),
    }
    changes = [_item_change(a, b) for a, b in usable]
    return {
        "same_judge": not judge_differences,
        "judge_differences": list(judge_differences),
        "method": {
            "delta": "mean over items of coverage B minus coverage A (macro: mean over tasks)",
            "delta_ci95": "Tango's paired score interval on fractional counts per task; "
            "macro: MOVER over tasks",
            "p_value": "paired sign-flip permutation test on per-item coverage differences",
            "seed": seed,
        },
        "tasks": tasks,
        "groups": {g: _describe(p) for g, p in by_group.items()},
        "average": average,
        "skipped": skipped,
        "dropped_ranking": dropped_ranking(usable),
        "items": [c for c in changes if c["dropped"] or c["gained"]],
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _delta(x: float | None, ci: list[float | None] | None = None) -> str:
    if x is None:
        return "–"
    text = f"{100 * x:+.1f}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_coverage_markdown(result: dict[str, Any], label_a: str, label_b: str) -> str:
    """The coverage section of compare.md: tasks, groups, the dropped points ranked, and
    every item where B dropped or gained a point, naming each point."""
    rows = []
    for name, s in [*result["tasks"].items(), ("**macro average**", result["average"])]:
        rows.append(
            [
                name,
                str(s["n"]),
                _pct(s["mean_coverage_a"]),
                _pct(s["mean_coverage_b"]),
                _delta(s["delta"], s["delta_ci95"]),
                f"{s['p_value']:.3g}",
                str(s["points_dropped"]),
                str(s["points_gained"]),
            ]
        )
    skipped = result["skipped"]
    parts = [
        "## Key-point coverage",
        "",
        f"Coverage in % of key points per item, Δ = B − A in points with its 95% interval "
        f"(Tango's paired score interval on fractional counts; macro: MOVER); p = paired "
        f"sign-flip permutation test. Items with a judge error "
        f"in A ({skipped['judge_error_a']}) or B ({skipped['judge_error_b']}), or whose key "
        f"points differ between the runs ({skipped['key_points_differ']}), are left out.",
        "",
        _table(["task", "n", "cov A", "cov B", "Δ cov [95% CI]", "p", "dropped", "gained"], rows),
    ]
    if result.get("judge_differences"):
        parts += [
            "",
            "The runs were judged differently (the warning on top names the judges): a "
            "coverage difference may be the judges'. Replay both runs' responses through one "
            "judge.",
        ]
    if len(result["groups"]) > 1:
        group_rows = [
            [
                g,
                str(s["n"]),
                _pct(s["mean_coverage_a"]),
                _pct(s["mean_coverage_b"]),
                _delta(s["delta"]),
                _pct(s["full_coverage_a"]),
                _pct(s["full_coverage_b"]),
                str(s["points_dropped"]),
            ]
            for g, s in result["groups"].items()
        ]
        header = ["group", "n", "cov A", "cov B", "Δ", "full A", "full B", "dropped"]
        parts += ["", "### By group", "", _table(header, group_rows)]
    ranking = result["dropped_ranking"]
    parts += ["", f"### Key points `{label_b}` dropped, most often lost first", ""]
    if ranking:
        parts.append(
            _table(
                ["task", "key point", "lost", f"covered by `{label_a}`", "loss rate"],
                [
                    [
                        r["task"],
                        _cell(r["point"]),
                        str(r["lost"]),
                        str(r["covered_by_a"]),
                        f"{100 * r['loss_rate']:.0f}%",
                    ]
                    for r in ranking
                ],
            )  # fmt: skip
        )
    else:
        parts.append(f"None: `{label_b}` covers every key point `{label_a}` covers.")
    items = result["items"]
    parts += ["", f"### Items where `{label_b}` dropped or gained key points: {len(items)}", ""]
    for c in items:
        line = f"- {c['task']} `{c['id']}`: coverage {_pct(c['coverage_a'])} → "
        line += f"{_pct(c['coverage_b'])}"
        if c["dropped"]:
            line += "; dropped: " + "; ".join(f"“{_cell(p)}”" for p in c["dropped"])
        if c["gained"]:
            line += "; gained: " + "; ".join(f"“{_cell(p)}”" for p in c["gained"])
        parts.append(line)
    return "\n".join(parts) + "\n"
