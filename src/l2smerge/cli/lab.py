"""`l2smerge lab train|export`: the bundled System 1 / System 2 pair."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from l2smerge.cli import app
from l2smerge.util.errors import L2SError

lab_app = typer.Typer(
    help="The bundled lab pair: a tiny System 1 / System 2 model pair on a synthetic task.",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")


@lab_app.command("train")
def train_command(
    out: Path = typer.Option(..., "-o", "--out", help="Directory for system1/ and system2/."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation and training data."),
    threads: int = typer.Option(
        2, "--threads", min=1, help="torch CPU threads (1 is faster on a busy machine)."
    ),
) -> None:
    """Train the pair from scratch (about 20 minutes on 2 idle CPU cores; bundled: --seed 1)."""
    from l2smerge.lab import train

    for name in ("system1", "system2"):
        if (out / name).exists():
            raise L2SError(f"{out / name} already exists; choose another output directory")
    train.main(out, seed, threads=threads)


@lab_app.command("export")
def export_command(
    out: Path = typer.Argument(..., help="Directory to write the pair, benchmark and calibration."),
    force: bool = typer.Option(False, "--force", help="Overwrite what is already there."),
) -> None:
    """Write DIR/system1, DIR/system2, DIR/benchmarks/lab/test.jsonl and DIR/calibration.jsonl."""
    from l2smerge.lab.bench import export

    written = export(out, force=force)
    console = Console(soft_wrap=True)  # a command to copy is never broken over two lines
    for what, path in written.items():
        console.print(f"{what:12} {path}", markup=False, highlight=False)
    console.print(
        f"evaluate with: l2smerge eval {out}/system2 --bench lab "
        f"--data-dir {out}/benchmarks -o RUN_DIR",
        markup=False,
        highlight=False,
    )
