"""Where sweep points run: here, one after another (`LocalRunner`), or as Ray tasks
(`RayRunner`: each point a task on a local instance or a cluster, one GPU each when the
cluster has GPUs). Grid points and adaptive-search trials go through the same runner, so a
point fails the same way wherever it runs: one L2SError that starts with the point's label.

A runner calls `task(spec_data, point.key(), point_dir, progress)` for each point (the
sweep's `merge_and_evaluate`; plain data, so it runs unchanged in a Ray worker) and yields
each point with the task's outcome as it finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from l2smerge.choose.sweep_spec import Point
from l2smerge.util.errors import L2SError

Task = Callable[[dict[str, Any], dict[str, Any], str, bool], dict[str, Any]]
Started = Callable[[Point], None]


class PointRunner(Protocol):
    def run(
        self, points: Sequence[Point], started: Started | None = None
    ) -> Iterator[tuple[Point, dict[str, Any]]]:
        """Run `points`, yielding (point, outcome) as each finishes (in any order). A runner
        that runs points one at a time here calls `started(point)` before each."""
        ...

    def close(self) -> None: ...


def point_dir(out: Path, point: Point) -> Path:
    return out / "points" / point.id


def point_failed(point: Point, message: str) -> L2SError:
    return L2SError(f"sweep point {point.label}: {message}")


class LocalRunner:
    """Each point in this process, one after another, with progress bars when asked."""

    def __init__(self, task: Task, spec_data: dict[str, Any], out: Path, progress: bool) -> None:
        self.task, self.spec_data, self.out, self.progress = task, spec_data, out, progress

    def run(
        self, points: Sequence[Point], started: Started | None = None
    ) -> Iterator[tuple[Point, dict[str, Any]]]:
        for point in points:
            if started is not None:
                started(point)
            try:
                outcome = self.task(
                    self.spec_data, point.key(), str(point_dir(self.out, point)), self.progress
                )
            except L2SError as exc:
                raise point_failed(point, str(exc)) from exc
            yield point, outcome

    def close(self) -> None:
        pass


class RayRunner:
    """Each point a Ray task. `address`: "local" starts a local instance (or uses the one
    this process started), "auto" or "ray://host:port" joins a cluster. Workers show no
    progress bars. `close` shuts down this process's Ray connection."""

    def __init__(
        self,
        task: Task,
        spec_data: dict[str, Any],
        out: Path,
        *,
        address: str,
        log_to_driver: bool,
        console: Console,
    ) -> None:
        self.task, self.spec_data, self.out = task, spec_data, out
        self.address, self.log_to_driver, self.console = address, log_to_driver, console
        self._remote = None

    def _remote_task(self):
        if self._remote is None:
            try:
                import ray
            except ModuleNotFoundError:
                raise L2SError("--ray: Ray is not installed; pip install 'l2smerge[ray]'") from None
            if not ray.is_initialized():
                address = None if self.address == "local" else self.address
                ray.init(address=address, include_dashboard=False, log_to_driver=self.log_to_driver)
            gpus = ray.cluster_resources().get("GPU", 0)
            options = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
            self.console.print(
                f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus:.0f} GPUs; "
                f"each point gets {'one GPU' if gpus >= 1 else 'one CPU'}"
            )
            self._remote = ray.remote(**options)(self.task)
        return self._remote

    def run(
        self, points: Sequence[Point], started: Started | None = None
    ) -> Iterator[tuple[Point, dict[str, Any]]]:
        if not points:
            return
        import ray

        remote = self._remote_task()
        pending = {
            remote.remote(self.spec_data, p.key(), str(point_dir(self.out, p)), False): p
            for p in points
        }
        count = len(pending)
        self.console.print(f"submitted {count} point{'s' if count != 1 else ''} to Ray")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, L2SError):  # the worker's error, as it would be here
                    raise point_failed(point, str(exc.cause)) from None
                raise
            yield point, outcome

    def close(self) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            return
        if ray.is_initialized():
            ray.shutdown()


def make_runner(
    task: Task,
    spec_data: dict[str, Any],
    out: Path,
    *,
    ray_address: str | None,
    progress: bool,
    console: Console,
) -> PointRunner:
    """The local runner (`ray_address` None) or a Ray runner."""
    if ray_address is None:
        return LocalRunner(task, spec_data, out, progress)
    return RayRunner(
        task, spec_data, out, address=ray_address, log_to_driver=progress, console=console
    )
