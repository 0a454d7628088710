"""`l2smerge demo [-o DIR]`: merge the bundled lab pair with every method, evaluate, report."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(
        Path("l2smerge-demo"), "-o", "--out", help="Output directory (resumes if it exists)."
    ),
    methods: str | None = typer.Option(
        None,
        "--methods",
        help="Comma-separated subset of methods (e.g. ties,task_arithmetic); default: all.",
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        min=1,
        help="Evaluate only the first N lab items (every level; default: all 250).",
    ),
    threads: int = typer.Option(
        1,
        "--threads",
        min=1,
        help="CPU threads for torch (the lab models are tiny: a second thread mostly waits).",
    ),
) -> None:
    """The study's experiment on the bundled System 1 / System 2 lab pair: merge with every
    method (study settings, plus a task-arithmetic alpha grid), evaluate System 1, System 2 and
    each merge on the lab benchmark, print the table and write DIR/report.md, plots and
    DIR/runs/LABEL/."""
    import torch

    from l2smerge.lab.demo import run_demo

    torch.set_num_threads(threads)
    chosen = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    run_demo(out, methods=chosen, limit=limit)
