"""The process that runs symbolic grading, so that an answer can be given a hard time limit.

sympy, under math-verify, can spend minutes or all memory on a short hostile answer
(`9^{9^{9^{9}}}` is a 370-million-digit integer), in C code that no signal interrupts, and
math-verify writes to stderr. So the symbolic judge runs in a child process
(`python -m l2smerge.eval.grading_worker`), started on first need and kept for later items:
it applies its own timer to each item, and is killed when it does not answer in time, its
stderr and logging go nowhere, and its address space is capped. Requests and replies are
JSON lines on its stdin and stdout.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError

STARTUP_TIMEOUT_S = 120.0  # importing sympy on a busy machine
KILL_GRACE_S = 2.0  # past the item's limit before the worker is killed
MEMORY_HEADROOM = 2 << 30  # bytes of address space the worker may add after its imports


class _Timeout(BaseException):
    """Raised by the worker's timer; a BaseException so that no `except Exception` in sympy
    or math-verify swallows it."""


def _serve() -> None:
    """The worker's loop: one request line in, one reply line out."""
    import logging
    import resource
    import signal

    logging.disable(logging.CRITICAL)
    from l2smerge.eval import symbolic
    from l2smerge.eval.equivalence import same_answer

    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        limit = pages * resource.getpagesize() + MEMORY_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass  # no /proc: the parent's time limit still bounds the worker

    fired = False

    def on_alarm(signum: int, frame: Any) -> None:
        nonlocal fired
        fired = True
        raise _Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    symbolic.leaf_equal("\\frac{x}{2}+1", "1+x/2")  # warm up the parser outside any item's time
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        fired = False
        reply: dict[str, Any]
        try:
            signal.setitimer(signal.ITIMER_REAL, float(request["seconds"]))
            try:
                verdict = same_answer(
                    request["pred"],
                    request["gold"],
                    integer=bool(request["integer"]),
                    leaf=symbolic.leaf_equal,
                )
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            reply = {"correct": bool(verdict)}
        except _Timeout:
            reply = {"error": "timeout"}
        except MemoryError:
            reply = {"error": "out of memory"}
        except RecursionError:
            reply = {"error": "nested too deeply"}
        except Exception as exc:  # a bug or a library failure on this answer: say which
            reply = {"error": f"{type(exc).__name__} in the symbolic judge"}
        if fired:  # the timer went off inside code that caught it and went on
            reply = {"error": "timeout"}
            symbolic._parse.cache_clear()
        out.write(json.dumps(reply) + "\n")
        out.flush()


class GradingWorker:
    """A client of one worker process; thread-safe, one request at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        atexit.register(self.close)

    def judge(self, pred: str, gold: str, *, integer: bool, seconds: float) -> bool | str:
        """The verdict on two canonical answers, or a string saying why there is none
        ("timeout", "out of memory", ...)."""
        request = json.dumps(
            {"pred": pred, "gold": gold, "integer": integer, "seconds": seconds}
        ).encode()
        with self._lock:
            proc = self._ensure_started()
            try:
                assert proc.stdin is not None
                proc.stdin.write(request + b"\n")
                proc.stdin.flush()
                line = self._read_line(time.monotonic() + seconds + KILL_GRACE_S)
            except (OSError, ValueError):
                line = None
            if line is None:  # hung in C code, or dead: start afresh next time
                code = proc.poll()
                self._kill()
                return "timeout" if code is None else f"the worker stopped (exit {code})"
            reply = json.loads(line)
        if "correct" in reply:
            return bool(reply["correct"])
        return str(reply.get("error", "no verdict"))

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._kill()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "l2smerge.eval.grading_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._buffer = b""
        ready = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        if ready is None or not json.loads(ready).get("ready"):
            self._kill()
            raise L2SError(
                f"the grading worker ({sys.executable} -m l2smerge.eval.grading_worker) did "
                f"not start within {STARTUP_TIMEOUT_S:.0f} s; check that math-verify imports"
            )
        return self._proc

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the worker, or None at the deadline or end of file."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._buffer = b""
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:  # a request the dead worker never read
                    pass


if __name__ == "__main__":
    _serve()
