"""`l2smerge report RUN_DIR... -o DIR`: the study-style table, plots and cost of several runs,
as report.md (PNG files next to it) and a self-contained report.html (PNGs embedded, no
external URLs, opens offline).

Numbers come from each run's results.jsonl, so every run is summarised the same way:
accuracy with a 95% Wilson interval per benchmark; the average is the macro mean over
benchmarks with a normal-approximation interval from the per-benchmark variances; length is
mean response tokens; length change is against a reference run (by default the one labelled
`system2`) on the benchmarks both share; cost is tokens per 1,000 queries (benchmarks weighted
equally) and dollars at a given price per million output tokens.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l2smerge.choose.pareto import pareto_front
from l2smerge.choose.stats import Z95, wilson_interval
from l2smerge.eval.runs import Run, is_reflective, level_of, load_run
from l2smerge.util.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from l2smerge.util.errors import L2SError

DEFAULT_REFERENCE = "system2"
PLOTS = {
    "accuracy_vs_tokens": "Accuracy against mean tokens, with the Pareto front",
    "by_level": "Length and reflective ratio by difficulty level",
    "length_distribution": "Distribution of response lengths",
}


@dataclass
class GroupStats:
    """Accuracy, length and reflection over one group of records (a benchmark or a level)."""

    n: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    mean_tokens: float | None  # None when the run has no token counts (replay, no tokenizer)
    reflective_ratio: float | None

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> GroupStats:
        n = len(records)
        correct = sum(bool(r["correct"]) for r in records)
        flags = [is_reflective(r) for r in records]
        refl = None if any(f is None for f in flags) else sum(map(bool, flags)) / n
        tokens = [r["tokens"] for r in records]
        return cls(
            n=n,
            accuracy=correct / n,
            accuracy_ci95=wilson_interval(correct, n),
            mean_tokens=None if None in tokens else sum(tokens) / n,
            reflective_ratio=refl,
        )


@dataclass
class RunStats:
    label: str
    path: Path
    benches: dict[str, GroupStats]
    levels: dict[str, dict[str, GroupStats]]  # bench -> level -> stats
    tokens: list[int]
    average: dict[str, Any] = field(default_factory=dict)
    length_change: float | None = None  # vs the reference, as a fraction (−0.5 = half)
    cost: dict[str, float | None] = field(default_factory=dict)

    def macro_tokens(self, benches: list[str]) -> float | None:
        values = [self.benches[b].mean_tokens for b in benches]
        return None if None in values else float(np.mean(values))


def summarise(run: Run) -> RunStats:
    benches = {b: GroupStats.of(run.bench_records(b)) for b in run.benches}
    levels: dict[str, dict[str, GroupStats]] = {}
    for bench in run.benches:
        by_level: dict[str, list[dict[str, Any]]] = {}
        for r in run.bench_records(bench):
            if (level := level_of(r)) is not None:
                by_level.setdefault(level, []).append(r)
        if by_level:
            levels[bench] = {lv: GroupStats.of(by_level[lv]) for lv in sorted(by_level, key=_lk)}
    stats = RunStats(
        label=run.label,
        path=run.path,
        benches=benches,
        levels=levels,
        tokens=[r["tokens"] for r in run.records.values() if r["tokens"] is not None],
    )
    accs = [s.accuracy for s in benches.values()]
    # Macro mean of independent benchmark accuracies: Var = sum(p(1-p)/n) / B^2.
    se = math.sqrt(sum(s.accuracy * (1 - s.accuracy) / s.n for s in benches.values())) / len(accs)
    mean_acc = float(np.mean(accs))
    ci = [max(0.0, mean_acc - Z95 * se), min(1.0, mean_acc + Z95 * se)]
    if len(benches) == 1:  # one benchmark: its Wilson interval (sane at 0% and 100%)
        ci = list(next(iter(benches.values())).accuracy_ci95)
    refl = [s.reflective_ratio for s in benches.values()]
    stats.average = {
        "accuracy": mean_acc,
        "accuracy_ci95": ci,
        "mean_tokens": stats.macro_tokens(list(benches)),
        "reflective_ratio": None if None in refl else float(np.mean(refl)),
    }
    return stats


def _lk(level: str) -> tuple[int, float | str]:
    try:
        return (0, float(level))
    except ValueError:
        return (1, level)


def _pick_reference(stats: list[RunStats], reference: str | Path | None) -> RunStats | None:
    if reference is None:
        return next((s for s in stats if s.label == DEFAULT_REFERENCE), None)
    ref = str(reference)
    for s in stats:
        if s.label == ref or Path(ref).resolve() == s.path.resolve():
            return s
    labels = ", ".join(s.label for s in stats)
    raise L2SError(f"--reference {ref!r} is not one of the runs' labels or paths ({labels})")


# ---------------------------------------------------------------- tables


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _tok(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _acc_ci(acc: float, ci: tuple[float, float] | list[float]) -> str:
    half = 100 * (ci[1] - ci[0]) / 2
    return f"{100 * acc:.1f} ± {half:.1f}"


def _tables(stats: list[RunStats], reference: RunStats | None, price: float | None) -> list[dict]:
    """Each table: {"title", "note", "header", "rows"} (strings), rendered to md and html."""
    benches: list[str] = []
    for s in stats:
        benches += [b for b in s.benches if b not in benches]
    main_rows = []
    for s in stats:
        row = [s.label]
        for b in benches:
            g = s.benches.get(b)
            row.append("–" if g is None else _acc_ci(g.accuracy, g.accuracy_ci95))
        row += [
            _acc_ci(s.average["accuracy"], s.average["accuracy_ci95"]),
            _tok(s.average["mean_tokens"]),
            "–" if s.length_change is None else f"{100 * s.length_change:+.1f}%",
            _pct(s.average["reflective_ratio"]),
        ]
        main_rows.append(row)
    ref_note = (
        f"Length change is against `{reference.label}` on the benchmarks both runs evaluated."
        if reference
        else "No reference run (label one `system2` or pass --reference) so no length change."
    )
    if len({tuple(sorted(s.benches)) for s in stats}) > 1:
        ref_note += (
            " The runs cover different benchmarks, so their Avg and mean tokens are over "
            "different sets; compare them per benchmark."
        )
    tables = [
        {
            "title": "Accuracy (%) ± 95% CI, length and reflection",
            "note": "± is half the width of the 95% interval (Wilson per benchmark); "
            "Avg = macro mean over benchmarks. " + ref_note,
            "header": ["run", *benches, "Avg", "mean tokens", "length change", "reflective %"],
            "rows": main_rows,
        },
        {
            "title": "Mean response tokens per benchmark",
            "note": "",
            "header": ["run", *benches],
            "rows": [
                [
                    s.label,
                    *(_tok(s.benches[b].mean_tokens) if b in s.benches else "–" for b in benches),
                ]
                for s in stats
            ],
        },
    ]
    level_benches: list[str] = []
    for s in stats:
        level_benches += [b for b in s.levels if b not in level_benches]
    for bench in level_benches:
        levels: list[str] = []
        for s in stats:
            levels += [lv for lv in s.levels.get(bench, {}) if lv not in levels]
        levels.sort(key=_lk)
        rows = []
        for s in stats:
            by = s.levels.get(bench, {})
            cells = [
                "–"
                if lv not in by
                else " / ".join(
                    (
                        _tok(by[lv].mean_tokens),
                        _pct(by[lv].reflective_ratio),
                        _pct(by[lv].accuracy),
                    )
                )
                for lv in levels
            ]
            rows.append([s.label, *cells])
        tables.append(
            {
                "title": f"{bench} by level: mean tokens / reflective % / accuracy %",
                "note": "",
                "header": ["run", *(f"level {lv}" for lv in levels)],
                "rows": rows,
            }
        )
    cost_header = ["run", "tokens per 1,000 queries"]
    if price is not None:
        cost_header.append(f"$ per 1,000 queries at ${price:g}/Mtok")
    if reference is not None:
        cost_header.append(f"saved vs {reference.label}")
    cost_rows = []
    for s in stats:
        per_1000 = s.cost["tokens_per_1000_queries"]
        row = [s.label, "–" if per_1000 is None else f"{per_1000:,.0f}"]
        if price is not None:
            dollars = s.cost["dollars_per_1000_queries"]
            row.append("–" if dollars is None else f"${dollars:,.4f}")
        if reference is not None:
            saved = s.cost.get("tokens_saved_per_1000_queries")
            row.append("–" if saved is None else f"{saved:,.0f} tokens")
        cost_rows.append(row)
    tables.append(
        {
            "title": "Cost",
            "note": "Output tokens per 1,000 queries drawn equally from the benchmarks above.",
            "header": cost_header,
            "rows": cost_rows,
        }
    )
    return tables


def _md_table(t: dict) -> str:
    lines = [f"## {t['title']}", ""]
    if t["note"]:
        lines += [t["note"], ""]
    lines.append("| " + " | ".join(t["header"]) + " |")
    lines.append("|" + "---|" * len(t["header"]))
    lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def _html_table(t: dict) -> str:
    esc = html.escape
    out = [f"<h2>{esc(t['title'])}</h2>"]
    if t["note"]:
        out.append(f"<p>{esc(t['note']).replace('`', '')}</p>")
    out.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in t["header"]))
    out.append("</tr></thead><tbody>")
    for r in t["rows"]:
        out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# ---------------------------------------------------------------- plots


def _plots(stats: list[RunStats], reference: RunStats | None, out: Path) -> dict[str, Path]:
    """Write the PNG plots that the runs have data for; returns name -> path."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    for name, draw in (
        ("accuracy_vs_tokens", _plot_front),
        ("by_level", _plot_levels),
        ("length_distribution", _plot_lengths),
    ):
        fig = draw(plt, stats, reference)
        if fig is None:  # no data for this plot (e.g. no token counts, no levels)
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written[name] = write_bytes_atomic(out / f"{name}.png", buf.getvalue())
    return written


def _plot_front(plt, stats: list[RunStats], reference: RunStats | None):
    timed = [s for s in stats if s.average["mean_tokens"] is not None]
    if not timed:
        return None
    acc = [100 * s.average["accuracy"] for s in timed]
    tok = [s.average["mean_tokens"] for s in timed]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(tok, acc, color="tab:blue", zorder=3)
    for s, x, y in zip(timed, tok, acc, strict=True):
        ax.annotate(s.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(acc, tok)
    ax.plot(
        [tok[i] for i in front],
        [acc[i] for i in front],
        "--",
        color="tab:orange",
        label="Pareto front",
        zorder=2,
    )
    if reference is not None and reference.average["mean_tokens"] is not None:
        ax.scatter(
            [reference.average["mean_tokens"]],
            [100 * reference.average["accuracy"]],
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            label=reference.label,
            zorder=4,
        )
    ax.set_xlabel("mean response tokens (macro over benchmarks)")
    ax.set_ylabel("accuracy % (macro over benchmarks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_levels(plt, stats: list[RunStats], reference: RunStats | None):
    """Length and reflective ratio by level, one row per benchmark that has levels."""
    level_benches = sorted({b for s in stats for b in s.levels})
    if not level_benches:
        return None
    fig, axes = plt.subplots(
        len(level_benches), 2, figsize=(10, 3.6 * len(level_benches)), squeeze=False
    )
    for row, bench in enumerate(level_benches):
        for s in stats:
            by = s.levels.get(bench)
            if not by:
                continue
            lv = list(by)
            mean_tokens = [by[x].mean_tokens for x in lv]
            if None not in mean_tokens:
                axes[row][0].plot(lv, mean_tokens, marker="o", label=s.label)
            refl = [by[x].reflective_ratio for x in lv]
            if None not in refl:
                axes[row][1].plot(lv, [100 * r for r in refl], marker="o", label=s.label)
        axes[row][0].set_title(f"{bench}: mean tokens by level")
        axes[row][1].set_title(f"{bench}: reflective % by level")
        for ax in axes[row]:
            ax.set_xlabel("level")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_lengths(plt, stats: list[RunStats], reference: RunStats | None):
    timed = [s for s in stats if s.tokens]
    if not timed:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(timed) + 1.8))
    try:
        ax.boxplot([s.tokens for s in timed], orientation="horizontal")
    except TypeError:  # matplotlib < 3.10
        ax.boxplot([s.tokens for s in timed], vert=False)
    ax.set_yticks(range(1, len(timed) + 1), [s.label for s in timed])
    ax.set_xlabel("response tokens (all items)")
    ax.grid(alpha=0.3, axis="x")
    return fig


# ---------------------------------------------------------------- report

_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%}"
)


def write_report(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    reference: str | Path | None = None,
    price_per_mtok: float | None = None,
    title: str = "l2smerge report",
    notes: str | None = None,
) -> dict[str, Any]:
    """Write report.md, report.html, report.json and the plots to `out_dir`; return report.json.

    `labels` name the runs (default: each run folder's name); `reference` is a label or path
    of one of the runs (default: the run labelled "system2", if any); `notes` is markdown
    placed under the title (e.g. the sweep's selection)."""
    if not run_dirs:
        raise L2SError("report needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise L2SError(f"got {len(labels)} labels for {len(run_dirs)} run directories")
    runs = [load_run(p, None if labels is None else labels[i]) for i, p in enumerate(run_dirs)]
    seen: dict[str, int] = {}
    for run in runs:  # keep labels unique: two folders named "run" become run, run-2
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label}-{seen[run.label]}"
    stats = [summarise(r) for r in runs]
    ref = _pick_reference(stats, reference)
    for s in stats:
        per_query = s.average["mean_tokens"]
        s.cost = {
            "tokens_per_1000_queries": None if per_query is None else 1000 * per_query,
            "dollars_per_1000_queries": (
                None
                if price_per_mtok is None or per_query is None
                else 1000 * per_query * price_per_mtok / 1e6
            ),
        }
        if ref is not None:
            shared = [b for b in s.benches if b in ref.benches]
            if shared and None not in (s.macro_tokens(shared), ref.macro_tokens(shared)):
                s.length_change = s.macro_tokens(shared) / ref.macro_tokens(shared) - 1
                saved = 1000 * (ref.macro_tokens(shared) - s.macro_tokens(shared))
                s.cost["tokens_saved_per_1000_queries"] = saved
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(stats, ref, out)
    tables = _tables(stats, ref, price_per_mtok)
    timed = [s for s in stats if s.average["mean_tokens"] is not None]
    acc = [s.average["accuracy"] for s in timed]
    tok = [s.average["mean_tokens"] for s in timed]
    front = [timed[i].label for i in pareto_front(acc, tok)]

    md = [f"# {title}", ""]
    if notes:
        md += [notes, ""]
    md += [f"Runs: {', '.join(f'`{s.label}` ({s.path})' for s in stats)}.", ""]
    front_text = ", ".join(front) if front else "not available (no token counts)"
    md += [f"Pareto front (accuracy vs tokens): {front_text}.", ""]
    untimed = [s.label for s in stats if s.average["mean_tokens"] is None]
    if untimed:
        md += [
            f"No token counts in {', '.join(untimed)} (a replayed run without --tokenizer): "
            "their length and cost show as –.",
            "",
        ]
    html_parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        html_parts.append(f"<pre>{html.escape(notes)}</pre>")
    html_parts.append(f"<p>Pareto front (accuracy vs tokens): {html.escape(front_text)}.</p>")
    for t in tables:
        md += [_md_table(t), ""]
        html_parts.append(_html_table(t))
    for name, path in plots.items():
        md += [f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({path.name})", ""]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        html_parts += [
            f"<h2>{html.escape(PLOTS[name])}</h2>",
            f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>",
        ]
    html_parts.append("</body></html>")
    summary = {
        "title": title,
        "reference": None if ref is None else ref.label,
        "price_per_mtok": price_per_mtok,
        "pareto_front": front,
        "runs": [
            {
                "label": s.label,
                "path": str(s.path),
                "average": s.average,
                "length_change": s.length_change,
                "cost": s.cost,
                "benchmarks": {
                    b: {
                        "n": g.n,
                        "accuracy": g.accuracy,
                        "accuracy_ci95": list(g.accuracy_ci95),
                        "mean_tokens": g.mean_tokens,
                        "reflective_ratio": g.reflective_ratio,
                    }
                    for b, g in s.benches.items()
                },
                "levels": {
                    b: {
                        lv: {
                            "n": g.n,
                            "accuracy": g.accuracy,
                            "mean_tokens": g.mean_tokens,
                            "reflective_ratio": g.reflective_ratio,
                        }
                        for lv, g in by.items()
                    }
                    for b, by in s.levels.items()
                },
            }
            for s in stats
        ],
        "plots": {name: p.name for name, p in plots.items()},
    }
    write_text_atomic(out / "report.md", "\n".join(md))
    write_text_atomic(out / "report.html", "\n".join(html_parts) + "\n")
    write_json_atomic(out / "report.json", summary)
    return summary
