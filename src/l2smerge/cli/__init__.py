"""The `l2smerge` command. Each subcommand lives in its own module in this package and
registers itself on `app`; heavy imports (torch, transformers) stay inside the command
functions so `l2smerge --help` is fast."""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import sys
import warnings

import typer
from rich.console import Console

from l2smerge.util.errors import L2SError, L2SWarning

app = typer.Typer(
    name="l2smerge",
    help="Long-to-short reasoning by model merging: merge, evaluate, compare, choose, ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _print_version(value: bool) -> None:
    if value:
        from l2smerge import __version__

        typer.echo(f"l2smerge {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """Long-to-short reasoning by model merging: merge, evaluate, compare, choose, ship."""


# Subcommand modules, one per command; each registers its command on `app`.
_COMMAND_MODULES = (
    "merge",
    "methods",
    "eval",
    "lab",
    "demo",
    "compare",
    "report",
    "sweep",
    "export",
)
for _name in _COMMAND_MODULES:
    importlib.import_module(f"l2smerge.cli.{_name}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """l2smerge's own warnings as one plain line on stderr; others as Python prints them."""
    if issubclass(category, L2SWarning):
        Console(stderr=True).print(
            f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True
        )
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _print_error(message: str) -> None:
    """One line on stderr, with secrets masked; the message is plain text (a path or a
    server's reply with `[...]` or `:x:` in it is printed as is, not as rich markup)."""
    from rich.text import Text

    from l2smerge.util.redact import redact

    line = " ".join(redact(message).split())  # one line, whatever the message held
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), line), soft_wrap=True)


@functools.cache
def _skip_last_collection_at_exit() -> None:
    """At exit, skip the interpreter's last garbage collection, which walks every object torch
    created: 0.4 of the 0.55 s an exit took after `import torch` here. Exit handlers still
    run first and the memory goes with the process; registered for exit (once), not done
    now, so a caller of main() in a long-lived process (the tests) keeps collecting."""
    atexit.register(gc.freeze)


def main() -> None:
    warnings.showwarning = _show_warning
    _skip_last_collection_at_exit()
    try:
        app()
    except L2SError as exc:
        _print_error(str(exc))
        sys.exit(L2SError.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]")
        sys.exit(130)
    except BrokenPipeError:  # output piped into a reader that stopped (| head)
        sys.exit(1)
    except OSError as exc:  # disk full, read-only, permission... where no step named it
        from l2smerge.util.errors import describe_os_error

        _print_error(describe_os_error(exc))
        sys.exit(L2SError.exit_code)
