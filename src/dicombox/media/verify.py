"""Streaming copies and checksums, and reading written media back.

Everything here reads and writes in fixed chunks: no file, image or job is
ever held in memory.  Reading back what was just written must come from the
medium, not from the page cache, so files that were fsync'd are dropped from
the cache (``posix_fadvise(DONTNEED)``) before they are read again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import MediaError

CHUNK = 1 << 20

Progress = Callable[[int, int], None]


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise MediaError("cancelled", "cancelled by the operator")


class Meter:
    """Adds up bytes done and reports ``(done, total)`` to an optional callback."""

    def __init__(self, total: int, callback: Progress | None,
                 cancel: threading.Event | None = None):
        self.total = max(int(total), 0)
        self.done = 0
        self.callback = callback
        self.cancel = cancel

    def add(self, n: int) -> None:
        self.done += n
        check_cancel(self.cancel)
        if self.callback is not None:
            self.callback(min(self.done, self.total) if self.total else self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total or self.done, self.total or self.done)


def drop_cache(fd: int) -> None:
    """Ask the kernel to forget the cached pages of a (synced) file."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def sha256_file(path: Path, meter: Meter | None = None, uncached: bool = False) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        if uncached:
            drop_cache(f.fileno())
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if meter is not None:
                meter.add(len(chunk))
    return h.hexdigest(), size


def copy_file(src: Path, dst: Path, meter: Meter | None = None,
              fsync: bool = True) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` in chunks; return SHA-256 and size of what was copied."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                n = fout.write(view)
                view = view[n:]
            size += len(chunk)
            if meter is not None:
                meter.add(len(chunk))
        if fsync:
            os.fsync(fout.fileno())
    return h.hexdigest(), size


class HashSink:
    """A write-only file object that hashes and counts what it is given."""

    def __init__(self, meter: Meter | None = None):
        self._h = hashlib.sha256()
        self.size = 0
        self.meter = meter

    def write(self, data) -> int:
        self._h.update(data)
        n = len(data)
        self.size += n
        if self.meter is not None:
            self.meter.add(n)
        return n

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def verify_tree(root: Path, files: Sequence[tuple[str, str, int]], *,
                progress: Progress | None = None, cancel: threading.Event | None = None,
                uncached: bool = True, gone: Callable[[], bool] | None = None) -> None:
    """Compare every file of a manifest with the file under ``root``.

    ``files`` holds (relative path, SHA-256, size).  Raises ``verify-failed``
    naming the first difference, or ``removed`` when ``gone()`` says the
    medium disappeared while it was read.
    """
    meter = Meter(sum(size for _, _, size in files), progress, cancel)
    for rel, sha, size in files:
        path = Path(root, *rel.split("/"))
        try:
            got_sha, got_size = sha256_file(path, meter, uncached=uncached)
        except FileNotFoundError:
            if gone is not None and gone():
                raise MediaError("removed", "the medium was removed while it was read back") \
                    from None
            raise MediaError("verify-failed", f"{rel} is missing on the medium") from None
        except OSError as exc:
            if gone is not None and gone():
                raise MediaError("removed",
                                 "the medium was removed while it was read back") from exc
            raise MediaError("verify-failed", f"cannot read {rel} back: {exc.strerror}") from exc
        if got_size != size or got_sha != sha:
            raise MediaError("verify-failed",
                             f"{rel} differs on the medium ({got_size} bytes, expected {size})")
    meter.finish()


def verify_iso(iso_path: Path, files: Iterable[tuple[str, str, int]], *,
               progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
    """Compare the files inside an ISO image (by their Rock Ridge names) with a manifest."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    files = list(files)
    meter = Meter(sum(size for _, _, size in files), progress, cancel)
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(iso_path))
    except (OSError, PyCdlibException) as exc:
        raise MediaError("verify-failed", f"{iso_path.name} is not a readable ISO image: {exc}") \
            from exc
    try:
        for rel, sha, size in files:
            sink = HashSink(meter)
            try:
                iso.get_file_from_iso_fp(sink, rr_path="/" + rel)
            except PyCdlibException as exc:
                raise MediaError("verify-failed", f"{rel} is missing from the image: {exc}") \
                    from exc
            if sink.size != size or sink.hexdigest() != sha:
                raise MediaError("verify-failed", f"{rel} differs in the image")
    finally:
        iso.close()
    meter.finish()
