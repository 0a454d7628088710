"""`l2smerge compare RUN_A RUN_B`: what changed between two runs, on the items both evaluated.

Per benchmark: accuracy delta (B − A) with Tango's paired score 95% interval and an exact
McNemar p-value; mean-token ratio (B / A) with a paired bootstrap interval; reflective-ratio
change; a per-level view where items carry a level (MATH500, lab). The macro average weights
every benchmark equally; its delta interval combines the per-benchmark ones (MOVER), its
p-value is a sign-flip permutation test (the multi-benchmark analogue of McNemar). The items
one run got right and the other got wrong are written out with both responses side by side.
Per-group figures (accuracy, tokens, reflection) come from l2smerge.eval.metrics, the one
place they are computed.

Sampled runs (several responses per item): an item's verdict is its share of samples graded
correct (eval.metrics.item_records), so the 2×2 table holds fractional counts (`lost` = Σ
max(a − b, 0) over items, `gained` likewise); Tango's interval takes them as they are (as the
coverage A/B does: conservative, exact for 0/1 verdicts), and the p-value is the paired
sign-flip test on the per-item differences instead of McNemar's.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from l2smerge.choose.coverage_ab import (
    coverage_comparison,
    is_freeform,
    render_coverage_markdown,
)
from l2smerge.choose.stats import (
    DEFAULT_RESAMPLES,
    mcnemar_exact,
    paired_difference_interval,
    sign_flip_p_value,
    stratified_bootstrap,
)
from l2smerge.eval.identity import protocol_differences, protocol_warning
from l2smerge.eval.metrics import (
    group_figures,
    level_key,
    level_of,
    macro_interval,
    ordered_benches,
)
from l2smerge.eval.runs import Run, load_run
from l2smerge.util.atomic import write_json_atomic, write_jsonl_atomic, write_text_atomic
from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import iter_jsonl

QUESTION_FIELDS = ("question", "problem")
Pairs = list[tuple[dict[str, Any], dict[str, Any]]]


def _clean(value: float | None) -> float | None:
    """JSON has no NaN: undefined numbers become null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _ratios(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den, nan where den is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def shared_items(run_a: Run, run_b: Run) -> dict[str, Pairs]:
    """The items both runs evaluated, as (record in A, record in B) pairs, per benchmark in
    the fixed benchmark order, items by id."""
    by_bench: dict[str, Pairs] = {}
    for key in sorted(k for k in run_a.records if k in run_b.records):
        by_bench.setdefault(key[0], []).append((run_a.records[key], run_b.records[key]))
    return {b: by_bench[b] for b in ordered_benches(by_bench)}


def macro_mean_tokens(pairs_by_bench: dict[str, Pairs], side: int) -> float | None:
    """Mean tokens of one side (0 = A, 1 = B) over the shared items, macro over benchmarks."""
    means = [
        group_figures([pair[side] for pair in pairs])["mean_tokens"]
        for pairs in pairs_by_bench.values()
    ]
    return None if not means or None in means else float(np.mean(means))


def tokens_ratio(pairs_by_bench: dict[str, Pairs]) -> float | None:
    """The one definition of a length change (used by compare, report and sweep): macro mean
    tokens of B over macro mean tokens of A, both on the items both runs evaluated (each
    benchmark weighs the same). `length change` = tokens_ratio − 1."""
    a, b = macro_mean_tokens(pairs_by_bench, 0), macro_mean_tokens(pairs_by_bench, 1)
    return None if a is None or b is None or not a > 0 else b / a


def _describe(pairs: Pairs) -> dict[str, Any]:
    """Point figures (no intervals) for a set of paired records."""
    fa = group_figures([a for a, _ in pairs])
    fb = group_figures([b for _, b in pairs])
    refl_a, refl_b = fa["reflective_ratio"], fb["reflective_ratio"]
    return {
        "n": len(pairs),
        "accuracy_a": fa["accuracy"],
        "accuracy_b": fb["accuracy"],
        "delta": fb["accuracy"] - fa["accuracy"],
        "mean_tokens_a": fa["mean_tokens"],
        "mean_tokens_b": fb["mean_tokens"],
        "tokens_ratio": tokens_ratio({"": pairs}),
        "reflective_ratio_a": refl_a,
        "reflective_ratio_b": refl_b,
        "reflective_ratio_delta": None if refl_a is None or refl_b is None else refl_b - refl_a,
        "study_reflective_ratio_a": fa["study_reflective_ratio"],
        "study_reflective_ratio_b": fb["study_reflective_ratio"],
        **({"samples_a": fa["samples"]} if "samples" in fa else {}),
        **({"samples_b": fb["samples"]} if "samples" in fb else {}),
    }


def _token_arrays(pairs: Pairs) -> tuple[np.ndarray, np.ndarray] | None:
    if any(a.get("tokens") is None or b.get("tokens") is None for a, b in pairs):
        return None
    return (
        np.array([a["tokens"] for a, _ in pairs], dtype=float),
        np.array([b["tokens"] for _, b in pairs], dtype=float),
    )


def _count(x: float) -> float | int:
    """A count of items: an int when whole (greedy runs), else the fractional sum."""
    return int(x) if float(x).is_integer() else x


def _verdicts(pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
    """Per item: A's and B's verdicts (1/0, or a sampled item's share of correct samples)."""
    return (
        np.array([float(a["correct"]) for a, _ in pairs]),
        np.array([float(b["correct"]) for _, b in pairs]),
    )


def _bench_comparison(pairs: Pairs, *, resamples: int, seed: int) -> dict[str, Any]:
    out = _describe(pairs)
    a_right, b_right = _verdicts(pairs)
    lost = _count(math.fsum(np.clip(a_right - b_right, 0, None)))
    gained = _count(math.fsum(np.clip(b_right - a_right, 0, None)))
    both_right = _count(math.fsum(np.minimum(a_right, b_right)))
    whole = isinstance(lost, int) and isinstance(gained, int)
    ratio_ci: tuple[float | None, float | None] = (None, None)
    tokens = _token_arrays(pairs)
    if tokens is not None:
        ratio_ci = stratified_bootstrap(
            [list(tokens)],
            lambda s: _ratios(s[0][1].mean(axis=-1), s[0][0].mean(axis=-1)),
            resamples=resamples,
            seed=seed,
        )
    out.update(
        {
            "delta_ci95": list(paired_difference_interval(gained, lost, len(pairs))),
            "p_value": (
                mcnemar_exact(int(lost), int(gained))
                if whole and np.isin(a_right, (0, 1)).all() and np.isin(b_right, (0, 1)).all()
                else sign_flip_p_value([b_right - a_right], seed=seed)
            ),
            "tokens_ratio_ci95": [_clean(ratio_ci[0]), _clean(ratio_ci[1])],
            "a_right_b_wrong": lost,
            "b_right_a_wrong": gained,
            "both_right": both_right,
            "both_wrong": _count(len(pairs) - lost - gained - both_right),
            "truncated_a": sum(bool(a.get("truncated")) for a, _ in pairs),
            "truncated_b": sum(bool(b.get("truncated")) for _, b in pairs),
        }
    )
    levels: dict[str, Pairs] = {}
    for a, b in pairs:
        level = level_of(a) or level_of(b)
        if level is not None:
            levels.setdefault(level, []).append((a, b))
    if levels:
        out["levels"] = {lv: _describe(levels[lv]) for lv in sorted(levels, key=level_key)}
    return out


def _macro(
    per_bench: dict[str, dict[str, Any]],
    bench_pairs: dict[str, Pairs],
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    names = list(per_bench)

    def mean_of(key: str) -> float | None:
        values = [per_bench[b][key] for b in names]
        return None if None in values else float(np.mean(values))

    refl_a, refl_b = mean_of("reflective_ratio_a"), mean_of("reflective_ratio_b")
    delta_ci = macro_interval(
        [per_bench[b]["delta"] for b in names], [per_bench[b]["delta_ci95"] for b in names]
    )
    ratio_ci: tuple[float | None, float | None] = (None, None)
    tokens = [_token_arrays(bench_pairs[b]) for b in names]
    if None not in tokens:
        ratio_ci = stratified_bootstrap(
            [list(t) for t in tokens],  # type: ignore[arg-type]
            lambda s: _ratios(
                np.mean([x[1].mean(axis=-1) for x in s], axis=0),
                np.mean([x[0].mean(axis=-1) for x in s], axis=0),
            ),
            resamples=resamples,
            seed=seed,
        )
    if len(names) == 1:
        p_value = per_bench[names[0]]["p_value"]
    else:
        diffs = [
            np.array([float(b["correct"]) - float(a["correct"]) for a, b in bench_pairs[name]])
            for name in names
        ]
        p_value = sign_flip_p_value(diffs, seed=seed)
    return {
        "benchmarks": names,
        "n": sum(per_bench[b]["n"] for b in names),
        "accuracy_a": mean_of("accuracy_a"),
        "accuracy_b": mean_of("accuracy_b"),
        "delta": mean_of("delta"),
        "delta_ci95": list(delta_ci),
        "p_value": p_value,
        "mean_tokens_a": macro_mean_tokens(bench_pairs, 0),
        "mean_tokens_b": macro_mean_tokens(bench_pairs, 1),
        "tokens_ratio": tokens_ratio(bench_pairs),
        "tokens_ratio_ci95": [_clean(ratio_ci[0]), _clean(ratio_ci[1])],
        "reflective_ratio_a": refl_a,
        "reflective_ratio_b": refl_b,
        "reflective_ratio_delta": None if refl_a is None or refl_b is None else refl_b - refl_a,
        "study_reflective_ratio_a": mean_of("study_reflective_ratio_a"),
        "study_reflective_ratio_b": mean_of("study_reflective_ratio_b"),
        "a_right_b_wrong": _count(math.fsum(per_bench[b]["a_right_b_wrong"] for b in names)),
        "b_right_a_wrong": _count(math.fsum(per_bench[b]["b_right_a_wrong"] for b in names)),
    }


def compare_runs(
    run_a: Run, run_b: Run, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """The content of compare.json for two loaded runs (without the item lists' responses)."""
    bench_pairs = shared_items(run_a, run_b)
    if not bench_pairs:
        raise L2SError(
            f"{run_a.path} and {run_b.path} share no (bench, id) items; "
            "evaluate both on the same benchmarks"
        )
    per_bench = {
        bench: _bench_comparison(pairs, resamples=resamples, seed=seed)
        for bench, pairs in bench_pairs.items()
    }
    for bench, stats in per_bench.items():
        stats["only_in_a"] = sum(1 for b, _ in run_a.records if b == bench) - stats["n"]
        stats["only_in_b"] = sum(1 for b, _ in run_b.records if b == bench) - stats["n"]
    freeform = [p for pairs in bench_pairs.values() for p in pairs if is_freeform(p[0])]
    coverage = {}
    if freeform:  # free-form tasks: key-point coverage and the dropped points (docs/tasks.md)
        judged = protocol_differences(run_a, run_b, fields=("judge",))
        coverage["coverage"] = coverage_comparison(freeform, seed=seed, judge_differences=judged)
    return {
        "run_a": {"label": run_a.label, "path": str(run_a.path)},
        "run_b": {"label": run_b.label, "path": str(run_b.path)},
        "method": {
            "delta": "accuracy of B minus accuracy of A on the shared items",
            "delta_ci95": "Tango's paired score interval per benchmark; macro: MOVER "
            "combination of the per-benchmark intervals",
            "p_value": "exact two-sided McNemar on discordant pairs "
            "(macro over several benchmarks: paired sign-flip permutation test)",
            "sampled_runs": "an item's verdict is its share of samples graded correct; the "
            "2x2 counts are sums of those shares, Tango's interval takes them as they are, "
            "the p-value is a paired sign-flip test",
            "tokens_ratio": "macro mean tokens of B / macro mean tokens of A on the shared "
            "items (paired percentile bootstrap interval, stratified by benchmark)",
            "resamples": resamples,
            "seed": seed,
        },
        "benchmarks": per_bench,
        "average": _macro(per_bench, bench_pairs, resamples=resamples, seed=seed),
        "skipped_benchmarks": {
            "only_in_a": sorted(set(run_a.benches) - set(bench_pairs)),
            "only_in_b": sorted(set(run_b.benches) - set(bench_pairs)),
        },
        **coverage,
    }


def discordant_items(
    run_a: Run, run_b: Run, *, data_dir: Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(A right & B wrong, B right & A wrong), each item with both responses side by side."""
    questions = _QuestionLookup(data_dir)
    a_wins: list[dict[str, Any]] = []
    b_wins: list[dict[str, Any]] = []
    for key, a in run_a.records.items():
        b = run_b.records.get(key)
        if b is None or float(a["correct"]) == float(b["correct"]):
            continue
        item = {
            "bench": key[0],
            "id": key[1],
            "level": level_of(a) or level_of(b),
            "question": questions.get(*key),
            "gold": a.get("gold", b.get("gold")),
            "a": _side(a),
            "b": _side(b),
        }
        (a_wins if float(a["correct"]) > float(b["correct"]) else b_wins).append(item)
    return a_wins, b_wins


def _side(record: dict[str, Any]) -> dict[str, Any]:
    """One run's answer to a discordant item; a sampled item's first sample, with how many of
    its samples were right."""
    shown = (record.get("sample_records") or [record])[0]
    side = {k: shown.get(k) for k in ("extracted", "tokens", "truncated", "response")}
    if "samples" in record:
        side.update(samples=record["samples"], samples_correct=record["samples_correct"])
    return side


class _QuestionLookup:
    """Question text by (bench, id) from <data_dir>/<bench>/test.jsonl, read lazily."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self.cache: dict[str, list[str | None]] = {}

    def get(self, bench: str, item_id: int) -> str | None:
        if self.data_dir is None:
            return None
        if bench not in self.cache:
            path = self.data_dir / bench / "test.jsonl"
            rows: list[str | None] = []
            if path.is_file():
                for lineno, row in iter_jsonl(path):  # rows[i] is line i + 1 (ids)
                    rows.extend([None] * (lineno - 1 - len(rows)))
                    rows.append(next((row[f] for f in QUESTION_FIELDS if f in row), None))
            self.cache[bench] = rows
        rows = self.cache[bench]
        return rows[item_id] if 0 <= item_id < len(rows) else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _signed_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def _ci_pct(ci: list[float | None]) -> str:
    if ci[0] is None or ci[1] is None:
        return "–"
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _num(x: float | None, fmt: str = ".0f") -> str:
    return "–" if x is None else format(x, fmt)


def _count_text(x: float | int) -> str:
    return str(x) if isinstance(x, int) else f"{x:.2f}"


def _ratio_ci(ci: list[float | None]) -> str:
    if ci[0] is None or ci[1] is None:
        return "–"
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.1e}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(
    result: dict[str, Any],
    a_wins: list[dict[str, Any]],
    b_wins: list[dict[str, Any]],
    *,
    max_examples: int = 10,
) -> str:
    a, b = result["run_a"]["label"], result["run_b"]["label"]
    rows = []
    for name, s in [*result["benchmarks"].items(), ("**macro average**", result["average"])]:
        rows.append(
            [
                name,
                str(s["n"]),
                _pct(s["accuracy_a"]),
                _pct(s["accuracy_b"]),
                f"{_signed_pct(s['delta'])} {_ci_pct(s['delta_ci95'])}",
                _p(s["p_value"]),
                _num(s["mean_tokens_a"]),
                _num(s["mean_tokens_b"]),
                (
                    "–"
                    if s["tokens_ratio"] is None
                    else f"{s['tokens_ratio']:.2f} {_ratio_ci(s['tokens_ratio_ci95'])}"
                ),
                f"{_pct(s['reflective_ratio_a'])} → {_pct(s['reflective_ratio_b'])}",
                f"{_count_text(s['a_right_b_wrong'])} / {_count_text(s['b_right_a_wrong'])}",
            ]
        )
    sampled = any("samples_a" in s or "samples_b" in s for s in result["benchmarks"].values())
    parts = [
        f"# Compare: A = `{a}`, B = `{b}`",
        "",
        f"A: `{result['run_a']['path']}`  ",
        f"B: `{result['run_b']['path']}`",
        "",
        "Accuracy in %, delta = B − A in points with its 95% interval (Tango's paired score "
        "interval; macro: MOVER over benchmarks); "
        "p = exact McNemar (macro: sign-flip permutation test); tokens ratio = mean tokens "
        "B / A with its 95% bootstrap interval; only items both runs evaluated count.",
        ""
        if not sampled
        else "\nSampled runs: an item counts by its share of samples graded correct (accuracy "
        "is avg@n); the A✓B✗ / A✗B✓ counts are sums of per-item differences, and p is the "
        "paired sign-flip test.\n",
        _md_table(
            [
                "benchmark",
                "n",
                "acc A",
                "acc B",
                "Δ acc [95% CI]",
                "p",
                "tokens A",
                "tokens B",
                "ratio [95% CI]",
                "reflective % A → B",
                "A✓B✗ / A✗B✓",
            ],
            rows,
        ),
    ]
    for name, s in result["benchmarks"].items():
        if "levels" not in s:
            continue
        parts += ["", f"## {name} by level", ""]
        level_rows = [
            [
                lv,
                str(x["n"]),
                _pct(x["accuracy_a"]),
                _pct(x["accuracy_b"]),
                _signed_pct(x["delta"]),
                _num(x["mean_tokens_a"]),
                _num(x["mean_tokens_b"]),
                _num(x["tokens_ratio"], ".2f"),
                f"{_pct(x['reflective_ratio_a'])} → {_pct(x['reflective_ratio_b'])}",
            ]
            for lv, x in s["levels"].items()
        ]
        parts.append(
            _md_table(
                ["level", "n", "acc A", "acc B", "Δ", "tokens A", "tokens B", "ratio", "refl. %"],
                level_rows,
            )
        )
    if "coverage" in result:
        parts += ["", render_coverage_markdown(result["coverage"], a, b)]
    for title, items, fname in (
        (f"A right, B wrong (what `{b}` dropped)", a_wins, "a_right_b_wrong.jsonl"),
        (f"B right, A wrong (what `{b}` gained)", b_wins, "b_right_a_wrong.jsonl"),
    ):
        parts += ["", f"## {title}: {len(items)} items", ""]
        if len(items) > max_examples:
            parts.append(f"The first {max_examples} are shown; all are in `{fname}`.\n")
        for item in items[:max_examples]:
            parts.append(_side_by_side(item, a, b))
    return "\n".join(parts) + "\n"


def _side_by_side(item: dict[str, Any], label_a: str, label_b: str) -> str:
    esc = html.escape
    head = f"### {item['bench']} #{item['id']}"
    if item.get("level") is not None:
        head += f" (level {item['level']})"
    lines = [head, ""]
    if item.get("question"):
        lines += [f"**Question:** {esc(str(item['question']))}", ""]
    lines += [f"**Gold:** `{item.get('gold')}`", ""]
    cells = []
    for label, side in ((label_a, item["a"]), (label_b, item["b"])):
        tokens = side.get("tokens")
        meta = ""
        if "samples" in side:
            meta = f"{side['samples_correct']}/{side['samples']} samples right; sample 0: "
        meta += f"answer <code>{esc(str(side.get('extracted')))}</code>, "
        meta += "tokens unknown" if tokens is None else f"{tokens} tokens"
        if side.get("truncated"):
            meta += ", truncated"
        cells.append(
            f'<td valign="top"><b>{esc(label)}</b>: {meta}'
            f'<pre style="white-space: pre-wrap">{esc(str(side.get("response") or ""))}</pre></td>'
        )
    lines += ["<table><tr>" + "".join(cells) + "</tr></table>", ""]
    return "\n".join(lines)


def write_compare(
    run_a: str | Path,
    run_b: str | Path,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    max_examples: int = 10,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two run directories; write compare.json, compare.md and the discordant items."""
    a, b = load_run(run_a), load_run(run_b)
    if a.label == b.label:
        a.label, b.label = f"A:{a.label}", f"B:{b.label}"
    result = compare_runs(a, b, resamples=resamples, seed=seed)
    result["protocol_differences"] = protocol_differences(a, b)  # printed loudly by the CLI
    a_wins, b_wins = discordant_items(a, b, data_dir=Path(data_dir) if data_dir else None)
    result["a_right_b_wrong"] = [{"bench": x["bench"], "id": x["id"]} for x in a_wins]
    result["b_right_a_wrong"] = [{"bench": x["bench"], "id": x["id"]} for x in b_wins]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "a_right_b_wrong.jsonl", a_wins)
    write_jsonl_atomic(out / "b_right_a_wrong.jsonl", b_wins)
    markdown = render_markdown(result, a_wins, b_wins, max_examples=max_examples)
    write_text_atomic(
        out / "compare.md", protocol_warning(result["protocol_differences"]) + markdown
    )
    write_json_atomic(out / "compare.json", result)
    return result
