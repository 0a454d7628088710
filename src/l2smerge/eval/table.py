"""The summary as a rich table: one row per benchmark, then the macro average (the model is
printed above it); and the console tables are printed on."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Width for output that is not a terminal (a file, a pipe): rich would assume 80 columns and
# cut cells ("ac…"); a table only takes the width it needs.
UNBOUNDED_WIDTH = 10_000


def table_console(*, stderr: bool = False) -> Console:
    """A console that prints tables whole: the terminal's width, or unbounded into files."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=UNBOUNDED_WIDTH)
    return console


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_protocol_warning(differences: list[str]) -> None:
    """Runs evaluated under different protocols, said loudly on stderr (eval/identity.py)."""
    if not differences:
        return
    console = Console(stderr=True, soft_wrap=True)
    console.print(
        "[bold yellow]warning: these runs were evaluated differently; their differences mix "
        "the models' effect with the protocol's:[/]",
        highlight=False,
    )
    for line in differences:
        console.print(f"[yellow]  - {escape(line)}[/]", highlight=False)


def summary_table(summary: dict[str, Any]) -> Table:
    """A sampled run (n samples per item) shows avg@n as its accuracy, and pass@n."""
    table = Table()  # no title: rich would cut a long model name to the table's width
    table.add_column("bench", no_wrap=True)
    samples = summary["average"].get("samples")
    accuracy = "acc%" if samples is None else f"avg@{samples}%"
    names = ["n", accuracy, "95% CI"] + ([] if samples is None else [f"pass@{samples}%"])
    for name in (*names, "tokens", "median", "trunc%", "reflect%", "refl/resp"):
        table.add_column(name, justify="right", no_wrap=True)

    def row(name: str, m: dict[str, Any], style: str | None = None) -> None:
        ci = m.get("accuracy_ci95")
        passed = [] if samples is None else [_pct(m.get("pass_at_k", {}).get(str(samples)))]
        table.add_row(
            name,
            str(m["n"]),
            _pct(m["accuracy"]),
            f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else "-",
            *passed,
            _num(m["mean_tokens"]),
            _num(m["median_tokens"]),
            _pct(m["truncated_ratio"]),
            _pct(m["reflective_ratio"]),
            _num(m["reflections_per_response"], 2),
            style=style,
        )

    for name, metrics in summary["benchmarks"].items():
        row(name, metrics)
    if len(summary["benchmarks"]) > 1:
        row("average", summary["average"], style="bold")
    return table
