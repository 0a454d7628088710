"""`l2smerge sweep SWEEP.yaml -o DIR [--ray [ADDRESS]]`."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app
from l2smerge.util.errors import L2SError

# typer has no option with an optional value, so `--ray` is a flag and the address, when
# given, arrives as the one extra word on the command line (`--ray auto`).
_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": False}


@app.command("sweep", context_settings=_EXTRA_ARGS)
def sweep_command(
    ctx: typer.Context,
    sweep_file: str = typer.Argument(..., help="SWEEP.yaml (see docs/sweep.md)."),
    out: Path = typer.Option(..., "-o", "--out", help="Sweep folder (rerun it to resume)."),
    ray: bool = typer.Option(
        False,
        "--ray",
        metavar="[ADDRESS]",
        help="Run each point as a Ray task: --ray alone starts a local Ray instance (or joins "
        "$RAY_ADDRESS); --ray auto or --ray ray://HOST:PORT joins a cluster. One GPU per "
        "point when it has GPUs. Needs pip install 'l2smerge\\[ray]'.",
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Non-inferiority margin in points of accuracy (default 2, or selection.margin): a "
        "point is eligible only if the lower end of the 95% interval of its accuracy delta "
        "against the reference is above -margin.",
    ),
    benchmark_margin: float | None = typer.Option(
        None,
        "--benchmark-margin",
        help="Also reject a point when any one benchmark drops by more than this many points "
        "(default: off, or selection.benchmark_margin).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Merge and evaluate every point of a sweep (resumable), write points.jsonl and
    pareto.json, choose the operating point by a stated rule and keep its checkpoint in
    OUT/chosen/."""
    from l2smerge.choose.sweep import run_sweep

    address = None
    if ctx.args:
        if not ray or len(ctx.args) > 1:
            raise L2SError(f"sweep: unexpected argument {ctx.args[-1]!r}")
        address = ctx.args[0]
        if not Path(sweep_file).exists() and Path(address).is_file():  # --ray ADDR SWEEP.yaml
            sweep_file, address = address, sweep_file
    ray_address = (address or "local") if ray else None
    run_sweep(
        sweep_file,
        out,
        progress=not quiet,
        ray_address=ray_address,
        margin=margin,
        benchmark_margin=benchmark_margin,
    )
