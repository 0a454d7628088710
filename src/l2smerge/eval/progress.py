"""A rich progress bar that shows items/s and generated tokens/s."""

from __future__ import annotations

import time
from typing import Any

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
        )
        self._task = self._progress.add_task(description, total=total, rates="")

    def __enter__(self) -> EvalProgress:
        self.started = time.perf_counter()
        try:
            self._progress.start()
        except LiveError:  # a caller's own live display (a sweep's) is already on screen
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
