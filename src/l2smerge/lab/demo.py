"""`l2smerge demo`: the study's experiment on the bundled lab pair, end to end.

1. write the lab benchmark and calibration file into DIR;
2. evaluate System 1 and System 2 (runs/system1, runs/system2);
3. merge the pair with every registered method at the study's 7B settings, plus a small alpha
   grid for task arithmetic, and evaluate each merge: this is an `l2smerge.choose.sweep` run in
   DIR/sweep (resumable), its run directories copied to runs/<label>;
4. write the study-style report (report.md, report.html, plots) with `l2smerge.choose.report`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from l2smerge.util.errors import L2SError

# Task arithmetic alphas tried besides the study's 0.7.
TA_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)
PRESET_SCALE = "7b"  # the study's main pair; its settings are the presets "<method>@7b"
MAX_TOKENS = 256  # the longest System 2 answer (level 5, three reflection rounds) is ~200
EVAL_BATCH = 64  # prompts per generate call: the tiny models cost little per row, so a large
# batch is ~1.8x faster than the CPU default of 8
BENCH = "lab"
# Every item (50 per level): with a tie against System 2 the 95% lower bound of the accuracy
# delta is -1.5 points at 250 items (-1.9 at 200), so the non-inferiority rule can choose.
DEFAULT_LIMIT: int | None = None
SENS_FIELDS = "question,short_answer"
STUDY_METHODS = (
    "average", "task_arithmetic", "ties", "dare_ta", "dare_ties", "lore", "twin", "aim_ties", "sens"
)  # fmt: skip


def demo_points(methods: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(label, sweep point) for every registered method, or only those in `methods`
    (registry names, or `aim_ties`)."""
    from l2smerge.merge.presets import PRESETS
    from l2smerge.methods import METHODS
    from l2smerge.methods.registry import plain_methods

    # The study's rows in its order (AIM as the study ran it, on TIES), then any other method.
    available = [*STUDY_METHODS, *(m for m in plain_methods() if m not in STUDY_METHODS)]
    chosen = available if methods is None else methods
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise L2SError(
            f"--methods: unknown method {unknown[0]!r}; available: {', '.join(available)}"
        )
    points: list[tuple[str, dict[str, Any]]] = []
    for name in chosen:
        if name == "dare_ta":  # the study's plain DARE row (DARE, then Average) comes first
            points.append(("dare", {"preset": f"dare@{PRESET_SCALE}"}))
        if name == "task_arithmetic":
            points += [(f"task_arithmetic-a{a:g}", {"method": name, "alpha": a}) for a in TA_ALPHAS]
        elif name == "sens":  # the study calibrated System 2 on question + short answer
            point = {"preset": f"sens@{PRESET_SCALE}", "calibration_fields": SENS_FIELDS}
            points.append((name, point))
        elif f"{name}@{PRESET_SCALE}" in PRESETS:
            points.append((name, {"preset": f"{name}@{PRESET_SCALE}"}))
        else:  # no study setting (e.g. lore, twin): the method's defaults
            points.append((name, {"method": name}))
    # Every point but average merges System 2's task vector onto the System 1 base: the
    # executor leaves the System 1 --model out of those (a zero task vector), so lore, twin
    # and sens run the study's single-task path (--base S1 --model S2).
    return points


def _point_label(record: dict[str, Any], labels: dict[str, str]) -> str:
    key = (record.get("preset"), record.get("method"), record.get("parameters", {}).get("alpha"))
    return labels[repr(key)]


def _key(point: dict[str, Any]) -> str:
    return repr((point.get("preset"), point.get("method"), point.get("alpha")))


def run_demo(
    out: Path,
    *,
    methods: list[str] | None = None,
    limit: int | None = DEFAULT_LIMIT,
    pair: dict[str, Path] | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from l2smerge.choose.report import write_report
    from l2smerge.choose.sweep import run_sweep
    from l2smerge.eval import evaluate
    from l2smerge.lab.bench import bundled_pair, write_benchmark, write_calibration

    console = console or Console()
    started = time.perf_counter()
    pair = pair or bundled_pair()
    points = demo_points(methods)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "benchmarks"
    calibration = out / "calibration.jsonl"
    write_benchmark(data_dir)
    write_calibration(calibration)
    runs = out / "runs"

    eval_opts = dict(
        backend="hf", data_dir=data_dir, limit=limit, max_tokens=MAX_TOKENS, batch_size=EVAL_BATCH
    )
    for name in ("system1", "system2"):
        console.rule(f"evaluating {name} on the lab benchmark")
        evaluate(pair[name], BENCH, out_dir=runs / name, progress=progress, **eval_opts)

    console.rule(f"merging and evaluating {len(points)} merges")
    spec = {
        "base": str(pair["system1"]),
        "models": [str(pair["system1"]), str(pair["system2"])],
        "merge": {"dtype": "float32", "calibration": str(calibration)},
        "points": [p for _, p in points],
        "eval": {
            "benches": [BENCH],
            **{k: str(v) if isinstance(v, Path) else v for k, v in eval_opts.items()},
        },
        "reference": {"run": str(runs / "system2"), "label": "system2"},
        "baselines": [{"run": str(runs / "system1"), "label": "system1"}],
        "report": False,
    }
    sweep = run_sweep(spec, out / "sweep", progress=progress, console=console)
    labels = {_key(p): label for label, p in points}
    labelled: dict[str, Path] = {}
    chosen_label: str | None = None
    for record in sweep["points"]:
        label = _point_label(record, labels)
        if record["id"] == sweep["selection"].get("chosen"):
            chosen_label = label
        dest = runs / label
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(record["run_dir"], dest)
        labelled[label] = dest

    order = ["system1", "system2"] + [label for label, _ in points if label in labelled]
    report = write_report(
        [runs / label for label in order],
        out,
        labels=order,
        reference="system2",
        title="l2smerge demo: long-to-short merging of the lab pair",
        notes=(
            "System 1 and System 2 are the bundled lab pair (docs/lab.md); merges use the "
            f"study's {PRESET_SCALE.upper()} settings, task arithmetic also at alpha "
            f"{', '.join(f'{a:g}' for a in TA_ALPHAS)}.\n\nSweep selection (`{out}/sweep`):"
            "\n\n```\n" + "\n".join(sweep["selection"].get("lines", [])) + "\n```"
        ),
        chosen=chosen_label,
    )
    print_table(report, console)
    console.print(chosen_line(report, chosen_label, sweep["selection"], out / "sweep"))
    console.print(
        f"wrote {out}/report.md, {out}/accuracy_vs_tokens.png and {out}/runs/ "
        f"in {time.perf_counter() - started:.0f}s"
    )
    return report


def chosen_line(
    report: dict[str, Any], label: str | None, selection: dict[str, Any], sweep_dir: Path
) -> str:
    """What the sweep's rule chose, against System 2, in one line."""
    rule = f"{selection.get('rule')}, margin {selection.get('margin'):g} points"
    if label is None:
        return f"the sweep's rule ({rule}) chose no merge: none is shown not worse than System 2"
    runs = {r["label"]: r for r in report["runs"]}
    point, ref = runs[label]["average"], runs["system2"]["average"]
    change = runs[label]["length_change"]
    return (
        f"the sweep's rule ({rule}) chose {label}: accuracy {100 * point['accuracy']:.1f}% "
        f"against {100 * ref['accuracy']:.1f}% for system2, {point['mean_tokens']:.0f} mean "
        f"tokens ({100 * change:+.1f}%); checkpoint {sweep_dir}/chosen"
    )


def print_table(report: dict[str, Any], console: Console) -> None:
    """The study's Table 1 for the lab: accuracy (95% CI), mean tokens, length change against
    System 2 and reflective ratio; then accuracy and mean tokens per level."""
    runs = report["runs"]
    levels = sorted({lv for r in runs for lv in r["levels"].get(BENCH, {})}, key=str)
    front = ", ".join(report["pareto_front"])
    table = Table(title=f"lab benchmark (Pareto front: {front})")
    for col in ("model", "accuracy % (95% CI)", "tokens", "vs system2", "reflective"):
        if col == "model":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, justify="right")
    by_level = Table(title="per level: accuracy % / mean tokens")
    by_level.add_column("model", no_wrap=True)
    for lv in levels:
        by_level.add_column(f"level {lv}", justify="right")
    for r in runs:
        b = r["benchmarks"][BENCH]
        lo, hi = b["accuracy_ci95"]
        change = r["length_change"]
        table.add_row(
            r["label"],
            f"{100 * b['accuracy']:.1f} ({100 * lo:.0f}-{100 * hi:.0f})",
            f"{b['mean_tokens']:.0f}",
            "–" if change is None else f"{100 * change:+.1f}%",
            f"{100 * b['reflective_ratio']:.0f}%",
        )
        cells = []
        for lv in levels:
            g = r["levels"].get(BENCH, {}).get(lv)
            cells.append(
                "–" if g is None else f"{100 * g['accuracy']:.0f} / {g['mean_tokens']:.0f}"
            )
        by_level.add_row(r["label"], *cells)
    console.print(table)
    console.print(by_level)
