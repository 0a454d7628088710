"""`l2smerge report RUN_DIR... -o DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (from l2smerge eval)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for the report."),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="Label or path of the run that length change is measured against "
        "(default: the run labelled system2).",
    ),
    label: list[str] | None = typer.Option(
        None, "--label", help="Name for each run, in order (repeat; default: folder names)."
    ),
    price_per_mtok: float | None = typer.Option(
        None, "--price-per-mtok", help="Dollars per million output tokens, for the cost table."
    ),
    title: str = typer.Option("l2smerge report", "--title", help="Report title."),
) -> None:
    """Study-style table (accuracy ± 95% CI, tokens, length change, reflective ratio, per
    level), plots and cost, as report.md and a self-contained report.html."""
    from l2smerge.choose.report import write_report
    from l2smerge.eval.table import print_protocol_warning, table_console

    summary = write_report(
        run_dirs,
        out,
        labels=label or None,
        reference=reference,
        price_per_mtok=price_per_mtok,
        title=title,
    )
    console = table_console()
    print_protocol_warning(summary["protocol_differences"])
    for run in summary["runs"]:
        change, tokens = run["length_change"], run["average"]["mean_tokens"]
        console.print(
            f"{run['label']:<24} accuracy {100 * run['average']['accuracy']:5.1f}%"
            + ("" if tokens is None else f"  mean tokens {tokens:8.0f}")
            + ("" if change is None else f"  length {100 * change:+.1f}%")
        )
    console.print(f"wrote {Path(out) / 'report.md'} and {Path(out) / 'report.html'}")
