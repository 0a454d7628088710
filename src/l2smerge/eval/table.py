"""The summary as a rich table: one row per benchmark, then the macro average."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['model']}", title_justify="left")
    table.add_column("bench", no_wrap=True)
    for name in ("n", "acc%", "95% CI", "tokens", "median", "trunc%", "reflect%", "refl/resp"):
        table.add_column(name, justify="right", no_wrap=True)

    def row(name: str, m: dict[str, Any], style: str | None = None) -> None:
        ci = m.get("accuracy_ci95")
        table.add_row(
            name,
            str(m["n"]),
            _pct(m["accuracy"]),
            f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else "-",
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
