"""util.daemon_pool: futures carry results and errors, shutdown cancels what has not started,
and a worker stuck in a job never keeps the process alive."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import wait

import pytest

from l2smerge.util.daemon_pool import DaemonPool


def test_results_errors_and_cancelling():
    pool = DaemonPool(1, "test")
    gate, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(30)

    first = pool.submit(hold)  # holds the only worker
    queued = [pool.submit(pow, 2, k) for k in range(3)]
    failing = pool.submit(int, "x")
    assert started.wait(30)
    pool.shutdown()  # the queued jobs are cancelled, the running one finishes
    gate.set()
    wait([first])
    assert first.result() is True
    assert all(f.cancelled() for f in [*queued, failing])
    done, not_done = wait(queued, timeout=5)  # a cancelled future counts as done for waiters
    assert not not_done

    pool = DaemonPool(2, "test")
    ok, bad = pool.submit(pow, 2, 10), pool.submit(int, "x")
    wait([ok, bad])
    assert ok.result() == 1024
    with pytest.raises(ValueError):
        bad.result()
    pool.shutdown()


def test_a_stuck_worker_does_not_hold_the_process_open():
    code = (
        "import threading\n"
        "from l2smerge.util.daemon_pool import DaemonPool\n"
        "pool = DaemonPool(1, 'stuck')\n"
        "pool.submit(threading.Event().wait)\n"  # never returns
        "pool.shutdown()\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert time.monotonic() - started < 30
