"""A thread pool whose workers never hold the process open.

`concurrent.futures.ThreadPoolExecutor` joins its worker threads when the interpreter exits.
So an HTTP request still in flight when a run stopped (a server error on another request, a
judge that went down, Ctrl-C) kept `l2smerge eval` alive until that request's timeout, ten
minutes by default, after the error was already printed. These workers only wait on the
network; the caller writes every result, so leaving a worker behind at exit loses nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonPool:
    """`submit` returns a concurrent.futures Future (usable with `wait`); `shutdown` cancels
    what has not started and lets the workers end after their current job."""

    def __init__(self, workers: int, name: str):
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple] | None]
        self._jobs = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
                job[0].set_running_or_notify_cancel()  # wakes anyone waiting on it
        for _ in self._workers:
            self._jobs.put(None)
