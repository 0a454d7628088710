"""`l2smerge export SWEEP_DIR [POINT] -o OUT`."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app


@app.command("export")
def export_command(
    sweep_dir: Path = typer.Argument(..., help="The -o folder of a finished `l2smerge sweep`."),
    point: str | None = typer.Argument(
        None, help="Point id (or a unique prefix of it) or label; default: the chosen point."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Write the checkpoint of one point of a sweep (default: the chosen one), rebuilt from
    its recipe, with a portable merge.yaml and a model card carrying the sweep's numbers."""
    from rich.console import Console

    from l2smerge.choose.ship import export_point

    written = export_point(sweep_dir, point, out, force=force, progress=not quiet)
    Console(quiet=quiet).print(f"wrote {written}")
