import json
import re
import subprocess
import sys

import pytest
from run_fixtures import paired_runs, write_run

from l2smerge.choose.report import write_report
from l2smerge.util.errors import L2SError


def _system1(tmp_path):
    rows = [{"bench": "gsm8k", "id": i, "correct": i < 80, "tokens": 200} for i in range(200)]
    rows += [
        {"bench": "math500", "id": i, "correct": i < 30, "tokens": 300, "level": 1 + i % 5}
        for i in range(100)
    ]
    return write_run(tmp_path / "system1", rows)


def test_report_table_plots_cost_and_offline_html(tmp_path):
    system2, merged = paired_runs(tmp_path)
    system1 = _system1(tmp_path)
    out = tmp_path / "report"
    summary = write_report([system1, system2, merged], out, price_per_mtok=2.0)
    assert summary["reference"] == "system2"
    runs = {r["label"]: r for r in summary["runs"]}
    # merged: gsm8k half the tokens, math500 0.4x -> macro tokens change vs system2
    s2, m = runs["system2"], runs["merged"]
    assert s2["length_change"] == pytest.approx(0.0)
    expected = m["average"]["mean_tokens"] / s2["average"]["mean_tokens"] - 1
    assert m["length_change"] == pytest.approx(expected)
    assert -0.6 < m["length_change"] < -0.5
    assert m["benchmarks"]["gsm8k"]["accuracy"] == pytest.approx(0.7)
    lo, hi = m["benchmarks"]["gsm8k"]["accuracy_ci95"]
    assert lo < 0.7 < hi
    assert m["cost"]["tokens_per_1000_queries"] == pytest.approx(1000 * m["average"]["mean_tokens"])
    assert m["cost"]["dollars_per_1000_queries"] == pytest.approx(
        m["cost"]["tokens_per_1000_queries"] * 2.0 / 1e6
    )
    assert runs["system2"]["levels"]["math500"]["5"]["mean_tokens"] == 2500
    # system1 (short, less accurate) and merged (short, more accurate than system1) are
    # both on the front; system2 (longest) is dominated by merged (more accurate on gsm8k).
    assert set(summary["pareto_front"]) == {"system1", "merged"}

    for name in ("accuracy_vs_tokens", "by_level", "length_distribution"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "length change" in md and "level 5" in md and "$ per 1,000 queries" in md
    assert "(accuracy_vs_tokens.png)" in md
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page), "the HTML must not load anything from the web"
    assert not re.search(r"""(src|href)=['"](?!data:)""", page)
    assert page.count("src='data:image/png;base64,") == 3
    assert json.loads((out / "report.json").read_text())["pareto_front"]


def test_reference_option_and_errors(tmp_path):
    system2, merged = paired_runs(tmp_path)
    summary = write_report([system2, merged], tmp_path / "r", reference="merged")
    runs = {r["label"]: r for r in summary["runs"]}
    assert runs["merged"]["length_change"] == pytest.approx(0.0)
    assert runs["system2"]["length_change"] > 0.9
    with pytest.raises(L2SError, match="--reference 'nope'"):
        write_report([system2, merged], tmp_path / "r2", reference="nope")
    only = write_run(tmp_path / "other", [{"bench": "aime24", "id": 0, "correct": 1, "tokens": 9}])
    summary = write_report([only], tmp_path / "r3")
    assert summary["reference"] is None and summary["runs"][0]["length_change"] is None
    assert not (tmp_path / "r3" / "by_level.png").exists()  # no levels, no level plot


def test_cli_report(tmp_path):
    system2, merged = paired_runs(tmp_path, n=40)
    out = tmp_path / "rep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "l2smerge",
            "report",
            str(system2),
            str(merged),
            "-o",
            str(out),
            "--price-per-mtok",
            "0.6",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "merged" in proc.stdout and (out / "report.html").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "l2smerge", "report", str(tmp_path / "missing"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_report_without_token_counts(tmp_path):
    rows = [
        {"bench": "math500", "id": i, "correct": i % 2 == 0, "tokens": None, "level": 1 + i % 5}
        for i in range(10)
    ]
    run = write_run(tmp_path / "system2", rows)
    summary = write_report([run], tmp_path / "r", price_per_mtok=1.0)
    (r,) = summary["runs"]
    assert r["average"]["mean_tokens"] is None and r["cost"]["tokens_per_1000_queries"] is None
    assert summary["pareto_front"] == []
    assert (tmp_path / "r" / "by_level.png").exists()  # reflective ratio by level still plotted
    assert not (tmp_path / "r" / "accuracy_vs_tokens.png").exists()
    assert "no token counts" in (tmp_path / "r" / "report.md").read_text()


def test_benchmark_order_average_interval_and_notes_in_html(tmp_path):
    # results in completion order: math500 lines before gsm8k lines; every item wrong
    rows = [{"bench": "math500", "id": i, "correct": False, "tokens": 5} for i in range(10)]
    rows += [{"bench": "gsm8k", "id": i, "correct": False, "tokens": 5} for i in range(10)]
    run = write_run(tmp_path / "zero", rows)
    notes = "Selection:\n\n```\nrule: x\n  ✓ a <b> & c\n```"
    summary = write_report([run], tmp_path / "r", notes=notes)
    md = (tmp_path / "r" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run | "))
    assert header.index("gsm8k") < header.index("math500")  # registry order, not completion
    avg = summary["runs"][0]["average"]
    assert avg["accuracy"] == 0 and avg["accuracy_ci95"][1] > 0.15
    assert "| 0.0 (0.0–19.6) |" in md  # a real interval on the average, not "0.0 ± 0.0"
    page = (tmp_path / "r" / "report.html").read_text()
    assert "```" not in page
    assert "<pre><code>rule: x\n  ✓ a &lt;b&gt; &amp; c\n</code></pre>" in page
    assert "pre{white-space:pre-wrap" in page and "overflow-x:auto" in page


def test_front_plot_labels_do_not_overlap_and_the_choice_is_marked(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2smerge.choose.report import place_labels

    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [100 + 3 * (i % 4) for i in range(12)]  # a tight cluster, as in a real sweep
    ys = [50 + 0.4 * (i // 4) for i in range(12)]
    ax.scatter(xs, ys)
    ax.margins(x=0.25, y=0.2)
    ax.autoscale_view()
    texts = place_labels(ax, xs, ys, [f"ties(alpha=0.{i},density=0.2)" for i in range(12)])
    fig.canvas.draw()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t) for t in texts]  # the text alone, not its leader line
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    plt.close(fig)

    system2, merged = paired_runs(tmp_path)
    write_report([system2, merged], tmp_path / "r", chosen="merged")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["chosen"] == "merged"
    from l2smerge.choose.report import _plot_front, summarise
    from l2smerge.eval.runs import load_run

    stats = [summarise(load_run(p)) for p in (system2, merged)]
    fig = _plot_front(plt, stats, stats[0], "merged")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "chosen: merged" in legend and "reference: system2" in legend
    plt.close(fig)


def test_many_runs_get_distinct_line_styles_and_an_outside_legend(tmp_path):
    from l2smerge.choose.report import line_styles

    for count in (3, 12, 25):
        styles = line_styles(count)
        colours = [s["color"] for s in styles]
        assert len(set(colours)) == count  # no colour repeats, whatever the count
        assert len({(s["color"], s["marker"], s["linestyle"]) for s in styles}) == count
    runs = []
    for k in range(12):
        rows_k = [
            {"bench": "math500", "id": i, "correct": True, "tokens": 9 + k, "level": 1 + i % 5}
            for i in range(10)
        ]
        runs.append(write_run(tmp_path / f"run{k}", rows_k))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2smerge.choose.report import _plot_levels, summarise
    from l2smerge.eval.runs import load_run

    fig = _plot_levels(plt, [summarise(load_run(r)) for r in runs], None, None)
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    for ax in fig.axes:  # the legend sits beside the plots, never over them
        assert not box.overlaps(ax.get_window_extent())
    plt.close(fig)
