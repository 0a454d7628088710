"""A rich progress bar that shows items/s and generated tokens/s, and transformers kept quiet
while it runs (its warnings and tqdm bars would tear the bar and ignore --no-progress)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.errors import LiveError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class EvalProgress:
    def __init__(self, total: int, *, enabled: bool = True, description: str = "evaluating"):
        self.total = total
        self.enabled = enabled
        self.items = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=False,
            console=Console(stderr=True),  # stdout stays for results a pipe may read
        )
        self._task = self._progress.add_task(description, total=total, rates="")

    def __enter__(self) -> EvalProgress:
        self.started = time.perf_counter()
        try:
            self._progress.start()
        except LiveError:  # a caller's own live display is already on this console
            self._progress.disable = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def advance(self, tokens: int) -> None:
        self.items += 1
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rates = f"{self.items / elapsed:.2f} items/s  {self.tokens / elapsed:.0f} tok/s"
        self._progress.update(self._task, advance=1, rates=rates)


@contextmanager
def quiet_transformers(*, show_bars: bool = False) -> Iterator[None]:
    """transformers (and huggingface_hub) at error level and, unless `show_bars`, without their
    tqdm bars ("Loading weights"), through their own controls; restored on exit. What matters
    to a user (missing weights, a capped limit) is said by l2smerge itself."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not show_bars:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"transformers(\.|$)")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
