"""Small durable-file primitives."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from pathlib import Path

#: ``sync_file_range`` flags (linux/fs.h).
SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def libc_function(name: str, argtypes: list, restype=ctypes.c_int):
    """A function of the C library that Python's ``os`` does not offer
    (``syncfs``, ``sync_file_range``), or ``None`` where libc has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


#: ``sync_file_range(fd, offset, nbytes, flags)`` (Linux), or ``None``.
SYNC_FILE_RANGE = libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename or creation inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """Create ``path`` (and parents), fsyncing each parent that gained an entry."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    path = Path(path)
    tmp_dir = tmp_dir or path.parent
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
