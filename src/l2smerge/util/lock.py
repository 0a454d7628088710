"""One process per output: an exclusive lock on a run directory (eval, sweep) or on a merge's
output folder, so two commands never write the same results.

The lock is an `fcntl.flock` on a small file that holds the owner's pid: for a directory
filled in place (eval run, sweep) the file is DIR/.l2smerge.lock; for a merge output, which
is renamed into place, it is `.OUT.lock` beside it. The kernel drops the lock when its holder
exits, however it exits (kill -9 included), so a lock is never stale; the file itself is
removed on release, and a directory made only to hold it is removed again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from l2smerge.util.errors import L2SError, describe_os_error
from l2smerge.util.paths import resolved

LOCK_NAME = ".l2smerge.lock"

F = TypeVar("F", bound=Callable[..., Any])


def lock_file_for(path: str | Path, *, beside: bool) -> Path:
    """The lock file of `path`: `.NAME.lock` beside it, or PATH/.l2smerge.lock."""
    path = resolved(path)
    return path.parent / f".{path.name}.lock" if beside else path / LOCK_NAME


def _holder(lock_file: Path) -> str:
    try:
        pid = lock_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def exclusive(path: str | Path, *, beside: bool = False) -> Iterator[None]:
    """Hold the lock of `path` for the block; L2SError 'PATH is in use by pid N' at once if
    another process holds it. `beside`: lock `.NAME.lock` next to `path` (an output that is
    renamed into place) instead of PATH/.l2smerge.lock."""
    path = Path(path)
    lock_file = lock_file_for(path, beside=beside)
    made = []  # folders created only to hold the lock, removed again if left empty
    for folder in reversed([lock_file.parent, *lock_file.parent.parents]):
        if not folder.exists():
            made.append(folder)
        elif not folder.is_dir():
            raise L2SError(f"{folder}: is a file, not a folder; choose another output")
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise L2SError(describe_os_error(exc, lock_file.parent, "cannot create")) from None
    fd = _acquire(lock_file, path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_file.unlink()  # before unlocking: a waiter then finds the file gone, retries
        os.close(fd)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: whatever the command wrote stays


def _acquire(lock_file: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # another process removed the folder it had made: remake
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as exc:
            raise L2SError(describe_os_error(exc, lock_file, "cannot create the lock")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise L2SError(
                    f"{path} is in use by {_holder(lock_file)}; wait for it to finish or "
                    "choose another output"
                ) from None
            raise L2SError(describe_os_error(exc, lock_file, "cannot lock")) from None
        # The previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else can find; start again.
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def holds_lock(argument: str, *, beside: bool = False) -> Callable[[F], F]:
    """Decorator: run the function while holding the lock of its argument `argument` (a
    path), e.g. `@holds_lock("out_dir")` on `evaluate`."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            path = signature.bind(*args, **kwargs).arguments[argument]
            with exclusive(path, beside=beside):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
