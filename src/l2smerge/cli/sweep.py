"""`l2smerge sweep SWEEP.yaml -o DIR [--ray [ADDRESS]]`."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app


@app.command("sweep")
def sweep_command(
    sweep_file: Path = typer.Argument(..., help="SWEEP.yaml (see docs/sweep.md)."),
    out: Path = typer.Option(..., "-o", "--out", help="Sweep folder (rerun it to resume)."),
    ray: str | None = typer.Option(
        None,
        "--ray",
        flag_value="local",
        is_flag=False,
        metavar="[ADDRESS]",
        help="Run each point as a Ray task: --ray alone starts a local Ray instance; "
        "--ray auto or --ray ray://HOST:PORT joins a cluster (one GPU per point when it has "
        "GPUs). Needs pip install 'l2smerge\\[ray]'.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Merge and evaluate every point of a sweep (resumable), write points.jsonl and
    pareto.json, and choose the operating point by a stated rule."""
    from l2smerge.sweep import run_sweep

    run_sweep(sweep_file, out, progress=not quiet, ray_address=ray)
