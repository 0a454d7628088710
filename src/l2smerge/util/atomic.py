"""Atomic file writes: write to a temporary file in the same folder, then rename over the
target, so a reader (or a crash) never sees a half-written file. Files get the permissions
open() gives (0666 less the umask), like every other file in an output folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, and setting it while other
# threads create files would give those files the wrong permissions.
_UMASK = _read_umask()


def temp_dir_beside(dest: Path) -> Path:
    """A new empty folder next to `dest`, to fill and then rename onto it. mkdtemp makes it
    private (0700); it gets the permissions a plain mkdir would give, so the renamed result
    is as readable as any other output."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~_UMASK)
    return tmp


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically. An OSError (disk full, read-only) names `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600, widened as open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> Path:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_text_atomic(path, text)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where the
    system or file system cannot."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(source: Path, dest: Path) -> None:
    """Put the finished folder `source` (a temporary name beside `dest`) at `dest`. A folder
    already at `dest` is swapped out in the same atomic step and its files end up under
    `source`'s name, then removed: there is no moment without `dest`, and nothing is left
    under another name (a process killed during that last removal leaves only `source`'s
    temporary name, which the next writer of `dest` cleans up). Where the system cannot swap
    atomically, the old folder is moved aside under `source`'s name plus "-old" first."""
    if not os.path.lexists(dest):
        os.rename(source, dest)
        return
    if not _exchange(source, dest):
        old = source.with_name(source.name + "-old")
        os.rename(dest, old)
        try:
            os.rename(source, dest)
        except OSError:
            os.rename(old, dest)  # put the earlier folder back
            raise
        source = old
    shutil.rmtree(source, ignore_errors=True)
