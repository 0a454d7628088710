"""`l2smerge report RUN_DIR... -o DIR`: the study-style table, plots and cost of several runs,
as report.md (PNG files next to it) and a self-contained report.html (PNGs embedded, no
external URLs, opens offline).

Numbers come from each run's results.jsonl through l2smerge.eval.metrics, so every run is
summarised the same way (and the same way as its summary.json): accuracy with a 95% Wilson
interval per benchmark; the average is the macro mean over benchmarks with the MOVER interval
built from the benchmarks' intervals; length is mean response tokens; length change is
against a reference run (by default the one labelled `system2`) on the items both evaluated
(compare.tokens_ratio, the definition compare and sweep use too); cost is tokens per 1,000
queries (benchmarks weighted equally) and dollars at a given price per million output tokens.
Benchmarks appear in the fixed registry order, levels in level order. Runs with free-form
tasks also get key-point coverage: a table and coverage against tokens with its Pareto front
(choose/coverage_report.py, docs/tasks.md).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2smerge.choose.compare import macro_mean_tokens, shared_items, tokens_ratio
from l2smerge.choose.coverage_report import coverage_table, run_coverage
from l2smerge.choose.pareto import pareto_front
from l2smerge.eval.identity import protocol_differences, protocol_warning
from l2smerge.eval.metrics import (
    figures_by_bench,
    level_key,
    macro_average,
    ordered_benches,
    responses_of,
)
from l2smerge.eval.runs import Run, load_run
from l2smerge.util.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from l2smerge.util.errors import L2SError

DEFAULT_REFERENCE = "system2"
PLOTS = {
    "accuracy_vs_tokens": "Accuracy against mean tokens, with the Pareto front",
    "by_level": "Length and reflective ratio by difficulty level",
    "length_distribution": "Distribution of response lengths",
    "coverage_vs_tokens": "Key-point coverage against mean tokens, with the Pareto front",
}


@dataclass
class RunStats:
    """A run's figures: per benchmark (eval.metrics.bench_figures, with `per_level`) and
    their macro average; length change and cost once a reference is known."""

    label: str
    path: Path
    run: Run
    benches: dict[str, dict[str, Any]]
    average: dict[str, Any]
    tokens: list[int]
    length_change: float | None = None  # vs the reference, as a fraction (−0.5 = half)
    cost: dict[str, float | None] = field(default_factory=dict)
    coverage: dict[str, Any] | None = None  # free-form tasks (coverage_report.run_coverage)

    def levels(self, bench: str) -> dict[str, dict[str, Any]]:
        return self.benches.get(bench, {}).get("per_level", {})


def summarise(run: Run) -> RunStats:
    benches = figures_by_bench(run.records.values())
    return RunStats(
        label=run.label,
        path=run.path,
        run=run,
        benches=benches,
        average=macro_average(benches),
        tokens=[
            r["tokens"] for r in responses_of(run.records.values()) if r.get("tokens") is not None
        ],
        coverage=run_coverage(run.records.values()),
    )


def _pick_reference(stats: list[RunStats], reference: str | Path | None) -> RunStats | None:
    if reference is None:
        return next((s for s in stats if s.label == DEFAULT_REFERENCE), None)
    ref = str(reference)
    for s in stats:
        if s.label == ref or Path(ref).resolve() == s.path.resolve():
            return s
    labels = ", ".join(s.label for s in stats)
    raise L2SError(f"--reference {ref!r} is not one of the runs' labels or paths ({labels})")


def _against_reference(s: RunStats, ref: RunStats) -> None:
    """Length change and tokens saved against the reference, on the items both evaluated."""
    pairs = shared_items(ref.run, s.run)
    ratio = tokens_ratio(pairs) if pairs else None
    if ratio is None:
        return
    s.length_change = ratio - 1
    ref_tokens, own_tokens = macro_mean_tokens(pairs, 0), macro_mean_tokens(pairs, 1)
    s.cost["tokens_saved_per_1000_queries"] = 1000 * (ref_tokens - own_tokens)


# ---------------------------------------------------------------- tables


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _tok(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _acc_ci(figures: dict[str, Any]) -> str:
    """Accuracy with its 95% interval, e.g. "70.0 (63.3–75.9)"; intervals near 0% or 100%
    are asymmetric, so they are shown as bounds, not as ±."""
    acc, ci = figures.get("accuracy"), figures.get("accuracy_ci95")
    if acc is None:
        return "–"
    if not ci:
        return f"{100 * acc:.1f}"
    return f"{100 * acc:.1f} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def _all_benches(stats: list[RunStats]) -> list[str]:
    return ordered_benches(b for s in stats for b in s.benches)


def _accuracy_table(
    stats: list[RunStats], reference: RunStats | None, benches: list[str]
) -> dict[str, Any]:
    rows = []
    for s in stats:
        row = [s.label]
        row += [_acc_ci(s.benches[b]) if b in s.benches else "–" for b in benches]
        row += [
            _acc_ci(s.average),
            _tok(s.average["mean_tokens"]),
            "–" if s.length_change is None else f"{100 * s.length_change:+.1f}%",
            _pct(s.average["reflective_ratio"]),
        ]
        rows.append(row)
    ref_note = (
        f"Length change is against `{reference.label}` on the items both runs evaluated."
        if reference
        else "No reference run (label one `system2` or pass --reference) so no length change."
    )
    if len({tuple(sorted(s.benches)) for s in stats}) > 1:
        ref_note += (
            " The runs cover different benchmarks, so their Avg and mean tokens are over "
            "different sets; compare them per benchmark."
        )
    return {
        "title": "Accuracy % (95% CI), length and reflection",
        "note": "Per benchmark: accuracy with its 95% Wilson interval; Avg: the macro mean "
        "over benchmarks with its 95% MOVER interval (combined from the benchmarks' "
        "intervals). " + ref_note,
        "header": ["run", *benches, "Avg", "mean tokens", "length change", "reflective %"],
        "rows": rows,
    }


def _tokens_table(stats: list[RunStats], benches: list[str]) -> dict[str, Any]:
    return {
        "title": "Mean response tokens per benchmark",
        "note": "",
        "header": ["run", *benches],
        "rows": [
            [
                s.label,
                *(_tok(s.benches[b]["mean_tokens"]) if b in s.benches else "–" for b in benches),
            ]
            for s in stats
        ],
    }


def _level_table(stats: list[RunStats], bench: str) -> dict[str, Any]:
    """One benchmark's levels: mean tokens / reflective % / accuracy % per run and level."""
    levels = sorted({lv for s in stats for lv in s.levels(bench)}, key=level_key)
    rows = []
    for s in stats:
        by = s.levels(bench)
        cells = [
            "–"
            if lv not in by
            else " / ".join(
                (
                    _tok(by[lv]["mean_tokens"]),
                    _pct(by[lv]["reflective_ratio"]),
                    _pct(by[lv]["accuracy"]),
                )
            )
            for lv in levels
        ]
        rows.append([s.label, *cells])
    return {
        "title": f"{bench} by level: mean tokens / reflective % / accuracy %",
        "note": "",
        "header": ["run", *(f"level {lv}" for lv in levels)],
        "rows": rows,
    }


def _cost_table(
    stats: list[RunStats], reference: RunStats | None, price: float | None
) -> dict[str, Any]:
    header = ["run", "tokens per 1,000 queries"]
    if price is not None:
        header.append(f"$ per 1,000 queries at ${price:g}/Mtok")
    if reference is not None:
        header.append(f"saved vs {reference.label}")
    rows = []
    for s in stats:
        per_1000 = s.cost["tokens_per_1000_queries"]
        row = [s.label, "–" if per_1000 is None else f"{per_1000:,.0f}"]
        if price is not None:
            dollars = s.cost["dollars_per_1000_queries"]
            row.append("–" if dollars is None else f"${dollars:,.4f}")
        if reference is not None:
            saved = s.cost.get("tokens_saved_per_1000_queries")
            row.append("–" if saved is None else f"{saved:,.0f} tokens")
        rows.append(row)
    return {
        "title": "Cost",
        "note": "Output tokens per 1,000 queries drawn equally from the benchmarks above; "
        "tokens saved are counted on the items both runs evaluated.",
        "header": header,
        "rows": rows,
    }


def _tables(stats: list[RunStats], reference: RunStats | None, price: float | None) -> list[dict]:
    """Each table: {"title", "note", "header", "rows"} (strings), rendered to md and html."""
    benches = _all_benches(stats)
    tables = [
        _accuracy_table(stats, reference, benches),
        _tokens_table(stats, benches),
        *(_level_table(stats, b) for b in benches if any(s.levels(b) for s in stats)),
        _cost_table(stats, reference, price),
    ]
    coverage = coverage_table(
        [s.label for s in stats], [s.coverage for s in stats], reference and reference.label
    )
    return tables if coverage is None else [tables[0], coverage, *tables[1:]]


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
        out.append(_markdown_html(t["note"]))
    out.append("<div class='scroll'><table><thead><tr>")
    out.append("".join(f"<th>{esc(h)}</th>" for h in t["header"]))
    out.append("</tr></thead><tbody>")
    for r in t["rows"]:
        out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _markdown_html(text: str) -> str:
    """Markdown (notes, the sweep's selection) as HTML: fenced blocks become <pre>, `code`
    becomes <code>; raw HTML in the text is escaped, never rendered."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


# ---------------------------------------------------------------- plots


def _plots(
    stats: list[RunStats], reference: RunStats | None, chosen: str | None, out: Path
) -> dict[str, Path]:
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
        ("coverage_vs_tokens", _plot_coverage_front),
    ):
        fig = draw(plt, stats, reference, chosen)
        if fig is None:  # no data for this plot (e.g. no token counts, no levels)
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written[name] = write_bytes_atomic(out / f"{name}.png", buf.getvalue())
    return written


def place_labels(ax, xs: list[float], ys: list[float], labels: list[str]) -> list:
    """Annotate each point with its label where the label overlaps no other label, no point
    and stays inside the axes: candidate positions in rings around the point, nearest
    first; a label moved off its point gets a thin leader line. Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    points_px = [to_px((x, y)) for x, y in zip(xs, ys, strict=True)]
    marker = 5.0  # half-size in pixels of the area kept free around each point
    point_boxes = [(px - marker, py - marker, px + marker, py + marker) for px, py in points_px]
    frame = ax.get_window_extent(renderer)
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0)]
    placed: list[tuple[float, float, float, float]] = []
    texts = []

    def overlap(a, b) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    for i in order:
        best = None
        for ring in range(1, 9):
            for dx, dy in directions:
                offset = (dx * 5 * ring, dy * 5 * ring - (4 if dy < 0 else 0))
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                text = ax.annotate(
                    labels[i],
                    (xs[i], ys[i]),
                    xytext=offset,
                    textcoords="offset points",
                    fontsize=8,
                    ha=ha,
                    va=va,
                )
                box = text.get_window_extent(renderer)
                rect = (box.x0, box.y0, box.x1, box.y1)
                cost = sum(overlap(rect, other) for other in placed)
                cost += sum(overlap(rect, p) for j, p in enumerate(point_boxes) if j != i)
                outside = (
                    rect[0] < frame.x0
                    or rect[2] > frame.x1
                    or rect[1] < frame.y0
                    or rect[3] > frame.y1
                )
                cost += 1e6 if outside else 0.0
                text.remove()
                if best is None or cost < best[0]:
                    best = (cost, offset, ha, va, rect, ring)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        _, offset, ha, va, rect, ring = best  # type: ignore[misc]
        arrow = {"arrowstyle": "-", "color": "0.6", "lw": 0.6} if ring > 2 else None
        texts.append(
            ax.annotate(
                labels[i],
                (xs[i], ys[i]),
                xytext=offset,
                textcoords="offset points",
                fontsize=8,
                ha=ha,
                va=va,
                arrowprops=arrow,
            )
        )
        placed.append(rect)
    return texts


def _coverage_average(s: RunStats) -> dict[str, Any]:
    """A run's macro coverage figures (mean_coverage as "accuracy"), for the shared plot."""
    avg = s.coverage["average"] if s.coverage else {}
    return {"accuracy": avg.get("mean_coverage"), "mean_tokens": avg.get("mean_tokens")}


def _plot_coverage_front(plt, stats: list[RunStats], reference: RunStats | None, chosen):
    return _plot_front(plt, stats, reference, chosen, figures=_coverage_average, what="coverage")


def _plot_front(
    plt,
    stats: list[RunStats],
    reference: RunStats | None,
    chosen: str | None,
    figures=lambda s: s.average,
    what: str = "accuracy",
):
    timed = [
        s
        for s in stats
        if figures(s)["mean_tokens"] is not None and figures(s)["accuracy"] is not None
    ]
    if not timed:
        return None
    acc = [100 * figures(s)["accuracy"] for s in timed]
    tok = [figures(s)["mean_tokens"] for s in timed]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(tok, acc, color="tab:blue", zorder=3)
    front = pareto_front(acc, tok)
    ax.plot(
        [tok[i] for i in front],
        [acc[i] for i in front],
        "--",
        color="tab:orange",
        label="Pareto front",
        zorder=2,
    )
    if reference is not None and reference in timed:
        ax.scatter(
            [figures(reference)["mean_tokens"]],
            [100 * figures(reference)["accuracy"]],
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            label=f"reference: {reference.label}",
            zorder=4,
        )
    picked = [s for s in timed if s.label == chosen]
    if picked:
        ax.scatter(
            [figures(picked[0])["mean_tokens"]],
            [100 * figures(picked[0])["accuracy"]],
            s=260,
            marker="*",
            color="tab:green",
            edgecolors="black",
            linewidths=0.6,
            label=f"chosen: {chosen}",
            zorder=5,
        )
    over = "benchmarks" if what == "accuracy" else "tasks"
    ax.set_xlabel(f"mean response tokens (macro over {over})")
    ax.set_ylabel(f"{what} % (macro over {over})")
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.2)  # room for labels beside the outermost points
    ax.autoscale_view()
    place_labels(ax, tok, acc, [s.label for s in timed])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def line_styles(count: int) -> list[dict[str, Any]]:
    """`count` distinct (colour, marker, line style) combinations: a qualitative palette up to
    20 lines (tab10, then tab20), evenly spaced colours from a perceptual map beyond; markers
    and dashes vary too, so no two lines look alike."""
    import matplotlib

    if count <= 10:
        colours = [matplotlib.colormaps["tab10"](i) for i in range(count)]
    elif count <= 20:
        colours = [matplotlib.colormaps["tab20"](i) for i in range(count)]
    else:
        cmap = matplotlib.colormaps["turbo"]
        colours = [cmap(0.05 + 0.9 * i / (count - 1)) for i in range(count)]
    markers = "osD^vP*Xh<>"
    dashes = ["-", "--", "-.", ":"]
    return [
        {"color": colours[i], "marker": markers[i % len(markers)], "linestyle": dashes[i // 10 % 4]}
        for i in range(count)
    ]


def _plot_levels(plt, stats: list[RunStats], reference: RunStats | None, chosen: str | None):
    """Length and reflective ratio by level, one row per benchmark that has levels; one
    legend for the figure, beside the plots (it never covers data)."""
    level_benches = [b for b in _all_benches(stats) if any(s.levels(b) for s in stats)]
    if not level_benches:
        return None
    styles = dict(zip([s.label for s in stats], line_styles(len(stats)), strict=True))
    fig, axes = plt.subplots(
        len(level_benches), 2, figsize=(10, 3.6 * len(level_benches)), squeeze=False
    )
    handles: dict[str, Any] = {}
    for row, bench in enumerate(level_benches):
        for s in stats:
            by = s.levels(bench)
            if not by:
                continue
            lv = list(by)
            style = {**styles[s.label], "markersize": 4, "linewidth": 1.2}
            mean_tokens = [by[x]["mean_tokens"] for x in lv]
            if None not in mean_tokens:
                (line,) = axes[row][0].plot(lv, mean_tokens, label=s.label, **style)
                handles.setdefault(s.label, line)
            refl = [by[x]["reflective_ratio"] for x in lv]
            if None not in refl:
                (line,) = axes[row][1].plot(lv, [100 * r for r in refl], label=s.label, **style)
                handles.setdefault(s.label, line)
        axes[row][0].set_title(f"{bench}: mean tokens by level")
        axes[row][1].set_title(f"{bench}: reflective % by level")
        for ax in axes[row]:
            ax.set_xlabel("level")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=8,
            ncols=1 if len(handles) <= 25 else 2,
        )
    return fig


def _plot_lengths(plt, stats: list[RunStats], reference: RunStats | None, chosen: str | None):
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
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;white-space:nowrap}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:.6em;"
    "border-radius:4px;max-width:100%}"
    "code{background:#f3f3f3;padding:0 .2em}pre code{background:none;padding:0}"
    "img{max-width:100%}"
)


def _json_figures(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "per_level"}


def _load_runs(run_dirs: list[str | Path], labels: list[str] | None) -> list[Run]:
    """The runs, labelled uniquely: two folders named "run" become run, run-2."""
    if not run_dirs:
        raise L2SError("report needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise L2SError(f"got {len(labels)} labels for {len(run_dirs)} run directories")
    runs = [load_run(p, None if labels is None else labels[i]) for i, p in enumerate(run_dirs)]
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label}-{seen[run.label]}"
    return runs


def _cost(s: RunStats, price_per_mtok: float | None) -> dict[str, float | None]:
    """Output tokens and dollars per 1,000 queries (None without token counts or a price)."""
    per_query = s.average["mean_tokens"]
    return {
        "tokens_per_1000_queries": None if per_query is None else 1000 * per_query,
        "dollars_per_1000_queries": (
            None
            if price_per_mtok is None or per_query is None
            else 1000 * per_query * price_per_mtok / 1e6
        ),
    }


def _fronts(stats: list[RunStats]) -> tuple[list[str], list[str]]:
    """The labels on the Pareto front of accuracy against tokens, and of key-point coverage
    against tokens."""
    timed = [s for s in stats if s.average["mean_tokens"] is not None]
    acc = [s.average["accuracy"] for s in timed]
    tok = [s.average["mean_tokens"] for s in timed]
    front = [timed[i].label for i in pareto_front(acc, tok)]
    covered = [s for s in stats if s.coverage and None not in _coverage_average(s).values()]
    coverage_front = [
        covered[i].label
        for i in pareto_front(
            [_coverage_average(s)["accuracy"] for s in covered],
            [_coverage_average(s)["mean_tokens"] for s in covered],
        )
    ]
    return front, coverage_front


def _intro(stats: list[RunStats], front: list[str], coverage_front: list[str]) -> list[str]:
    """The lines under the title: the runs, the Pareto fronts, runs missing token counts."""
    front_text = ", ".join(front) if front else "not available (no token counts)"
    intro = [
        f"Runs: {', '.join(f'`{s.label}` ({s.path})' for s in stats)}.",
        "",
        f"Pareto front (accuracy vs tokens): {front_text}.",
        "",
    ]
    if coverage_front:
        intro += [f"Pareto front (key-point coverage vs tokens): {', '.join(coverage_front)}.", ""]
    partial = [
        f"{s.label} ({s.average['tokens_missing']} items)"
        for s in stats
        if s.average["tokens_missing"]
    ]
    if partial:
        intro += [
            f"No token counts for some or all items of {', '.join(partial)} (a replayed run "
            "without --tokenizer, or a replay file with `tokens` on only some lines): their "
            "length and cost show as –.",
            "",
        ]
    return intro


def _markdown(
    title: str,
    warning: str | None,
    notes: str | None,
    intro: list[str],
    tables: list[dict],
    plots: dict[str, Path],
) -> str:
    md = [f"# {title}", "", *([warning] if warning is not None else [])]
    md += [*([notes, ""] if notes else []), *intro]
    for t in tables:
        md += [_md_table(t), ""]
    for name, path in plots.items():
        md += [f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({path.name})", ""]
    return "\n".join(md)


def _html(
    title: str,
    warning: str | None,
    notes: str | None,
    intro: list[str],
    tables: list[dict],
    plots: dict[str, Path],
) -> str:
    """Self-contained: the plots are embedded as data URLs."""
    html_parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _markdown_html(warning) if warning is not None else "",
        _markdown_html(notes) if notes else "",
        _markdown_html("\n".join(intro)),
    ]
    for t in tables:
        html_parts.append(_html_table(t))
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        html_parts += [
            f"<h2>{html.escape(PLOTS[name])}</h2>",
            f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>",
        ]
    html_parts.append("</body></html>")
    return "\n".join(html_parts) + "\n"


def _run_json(s: RunStats) -> dict[str, Any]:
    return {
        "label": s.label,
        "path": str(s.path),
        "average": s.average,
        "length_change": s.length_change,
        "cost": s.cost,
        "benchmarks": {b: _json_figures(g) for b, g in s.benches.items()},
        "levels": {b: g["per_level"] for b, g in s.benches.items() if "per_level" in g},
        "coverage": s.coverage,
    }


def write_report(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    reference: str | Path | None = None,
    price_per_mtok: float | None = None,
    title: str = "l2smerge report",
    notes: str | None = None,
    chosen: str | None = None,
) -> dict[str, Any]:
    """Write report.md, report.html, report.json and the plots to `out_dir`; return report.json.

    `labels` name the runs (default: each run folder's name); `reference` is a label or path
    of one of the runs (default: the run labelled "system2", if any); `notes` is markdown
    placed under the title (e.g. the sweep's selection); `chosen` is the label of a run to
    mark as the chosen operating point in the plot."""
    runs = _load_runs(run_dirs, labels)
    stats = [summarise(r) for r in runs]
    ref = _pick_reference(stats, reference)
    for s in stats:
        s.cost = _cost(s, price_per_mtok)
        if ref is not None:
            _against_reference(s, ref)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(stats, ref, chosen, out)
    tables = _tables(stats, ref, price_per_mtok)
    front, coverage_front = _fronts(stats)
    differences = protocol_differences(*runs)  # said loudly: numbers that mix protocols
    intro = _intro(stats, front, coverage_front)
    warning = protocol_warning(differences) if differences else None
    markdown = _markdown(title, warning, notes, intro, tables, plots)
    page = _html(title, warning, notes, intro, tables, plots)
    summary = {
        "title": title,
        "reference": None if ref is None else ref.label,
        "chosen": chosen,
        "price_per_mtok": price_per_mtok,
        "pareto_front": front,
        "coverage_pareto_front": coverage_front,
        "protocol_differences": differences,
        "runs": [_run_json(s) for s in stats],
        "plots": {name: p.name for name, p in plots.items()},
    }
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.html", page)
    write_json_atomic(out / "report.json", summary)
    return summary
