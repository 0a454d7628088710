"""The one exception type the CLI turns into a one-line message and exit code 2, and the
wording of operating-system failures (disk full, read-only, permission) in such messages."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class L2SError(Exception):
    """A user-facing error: bad input, missing file, unknown option.

    The message must name the thing at fault (file, tensor, line, key) and, where it helps,
    what to do about it. The CLI prints it as a single line and exits with code 2.
    """

    exit_code = 2


class L2SWarning(UserWarning):
    """Something the user should know about a result that is still produced: an input that
    changes nothing, an output that equals an input. The CLI prints it as one line."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, L2SWarning, stacklevel=2)


_HINTS = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is used up; free some space",
    errno.EFBIG: "the file is larger than this system or its limits allow",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "no permission; choose another output folder",
    errno.EPERM: "not permitted; choose another output folder",
    errno.ELOOP: "a symlink loop",
}


def describe_os_error(exc: OSError, path: str | Path | None = None, doing: str = "") -> str:
    """One line for an operating-system failure, e.g. 'OUT/model.safetensors: cannot write (No
    space left on device: the disk is full; free some space)'. `path` defaults to the file
    the error names; `doing` says what failed ('cannot write')."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0)
    if hint:
        reason = f"{reason}: {hint}"
    text = f"{doing} ({reason})" if doing else reason
    return f"{where}: {text}" if where not in (None, "") else text


@contextlib.contextmanager
def writing(path: str | Path, doing: str = "cannot write", then: str = "") -> Iterator[None]:
    """Turn an OSError raised while writing `path` (disk full, read-only file system, no
    permission) into an L2SError naming `path`; `then` adds what happens now."""
    try:
        yield
    except OSError as exc:
        message = describe_os_error(exc, path, doing)
        raise L2SError(f"{message}; {then}" if then else message) from None
