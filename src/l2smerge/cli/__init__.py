"""The `l2smerge` command. Each subcommand lives in its own module in this package and
registers itself on `app`; heavy imports (torch, transformers) stay inside the command
functions so `l2smerge --help` is fast."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from l2smerge.util.errors import L2SError

app = typer.Typer(
    name="l2smerge",
    help="Long-to-short reasoning by model merging: merge, evaluate, compare, choose, ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

# Subcommand modules; a missing one (work in progress) is skipped, not fatal.
_COMMAND_MODULES = ("merge", "eval", "lab", "demo", "compare", "report", "sweep", "export")
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"l2smerge.cli.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"l2smerge.cli.{_name}":
            raise


def main() -> None:
    try:
        app()
    except L2SError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(L2SError.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]")
        sys.exit(130)
