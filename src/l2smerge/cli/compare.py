"""`l2smerge compare RUN_A RUN_B -o DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app


@app.command("compare")
def compare_command(
    run_a: Path = typer.Argument(..., help="Run directory A (the reference, e.g. System 2)."),
    run_b: Path = typer.Argument(..., help="Run directory B (e.g. a merged model)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for compare.json/.md."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Benchmark folder; shows question text next to the responses."
    ),
    max_examples: int = typer.Option(
        10, "--max-examples", help="Discordant items shown per direction in compare.md."
    ),
    resamples: int = typer.Option(
        2000, "--resamples", help="Bootstrap resamples (for the token-ratio interval)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the bootstrap and permutation test."),
) -> None:
    """Compare two runs item by item: accuracy delta (Tango's paired 95% CI, McNemar), length
    ratio, reflective ratio, per level, and the items one got right and the other wrong."""
    from rich.table import Table

    from l2smerge.choose.compare import write_compare
    from l2smerge.eval.table import print_protocol_warning, table_console

    result = write_compare(
        run_a,
        run_b,
        out,
        data_dir=data_dir,
        max_examples=max_examples,
        resamples=resamples,
        seed=seed,
    )
    a, b = result["run_a"]["label"], result["run_b"]["label"]
    table = Table(title=f"A = {a}   B = {b}")
    for col in ("benchmark", "n", "acc A", "acc B", "Δ [95% CI]", "p", "tokens B/A [95% CI]"):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    rows = [*result["benchmarks"].items(), ("macro average", result["average"])]
    for name, s in rows:
        lo, hi = s["delta_ci95"]
        rlo, rhi = s["tokens_ratio_ci95"]
        ratio = "–"
        if s["tokens_ratio"] is not None and rlo is not None and rhi is not None:
            ratio = f"{s['tokens_ratio']:.2f} [{rlo:.2f}, {rhi:.2f}]"
        table.add_row(
            name,
            str(s["n"]),
            f"{100 * s['accuracy_a']:.1f}",
            f"{100 * s['accuracy_b']:.1f}",
            f"{100 * s['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            f"{s['p_value']:.3g}",
            ratio,
        )
    console = table_console()
    print_protocol_warning(result["protocol_differences"])
    console.print(table)
    console.print(f"wrote {Path(out) / 'compare.json'} and {Path(out) / 'compare.md'}")
