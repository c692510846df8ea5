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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from . import scratch
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


def walk_tree(root: Path) -> Iterator[tuple[str, Path, bool, int]]:
    """Everything under ``root``: (relative path with "/", path, is a directory, size).

    A directory comes before what it holds, and a directory's files come
    one after the other (its subdirectories are visited after it), in the
    order the file system lists them.  Unlike ``os.walk``, which lists a
    whole directory first, nothing is held per entry: one directory is open
    at a time, and the list is of the directories still to visit (a series
    folder of 100 000 images costs no more than one of 10).
    """
    pending = [("", Path(root))]
    while pending:
        prefix, folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                path = folder / entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((rel + "/", path))
                    yield rel, path, True, 0
                else:
                    yield rel, path, False, entry.stat().st_size


def remove_tree(root: Path, ignore_errors: bool = False) -> None:
    """Remove ``root`` and everything under it, like ``shutil.rmtree``.

    ``shutil.rmtree`` lists each directory whole before it removes what is
    in it (some 150 bytes an entry); here each file is unlinked as the
    directory listing reaches it, and only the directories still to empty
    are remembered.  A missing ``root`` is not an error.
    """
    pending: list[tuple[Path, bool]] = [(Path(root), False)]
    while pending:
        folder, emptied = pending.pop()
        try:
            if emptied:
                os.rmdir(folder)
                continue
            below = []
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        below.append(Path(entry.path))
                    else:
                        os.unlink(entry.path)
            pending.append((folder, True))
            pending.extend((d, False) for d in below)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            os.unlink(folder)
        except OSError:
            if not ignore_errors:
                raise


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


#: ISO 9660 logical sector; the primary volume descriptor is in sector 16.
SECTOR = 2048
_PVD_SECTOR = 16
_DIRECTORY, _MULTI_EXTENT = 0x02, 0x80


def _bad_image(iso_path: Path, problem: str) -> MediaError:
    return MediaError("verify-failed", f"{iso_path.name} is not a readable ISO image: {problem}")


def _open_image(iso_path: Path):
    try:
        return open(iso_path, "rb")
    except OSError as exc:
        raise _bad_image(iso_path, exc.strerror or str(exc)) from exc


def _record_name(image, record: bytes, block: int) -> bytes:
    """A directory record's Rock Ridge name (``NM``), or its ISO 9660 name undecorated.

    The System Use area is walked as SUSP entries, following ``CE``
    continuation areas, so a name is found wherever the image put it.
    """
    name_len = record[32]
    iso_name = record[33:33 + name_len]
    area = record[33 + name_len + (1 - name_len % 2):]
    parts: list[bytes] = []
    seen = 0
    while area:
        ce = None
        i = 0
        while i + 4 <= len(area):
            sig, length = area[i:i + 2], area[i + 2]
            if length < 4 or i + length > len(area):
                break
            if sig == b"NM":
                parts.append(area[i + 5:i + length])
            elif sig == b"CE" and length >= 28:
                ce = (int.from_bytes(area[i + 4:i + 8], "little"),
                      int.from_bytes(area[i + 12:i + 16], "little"),
                      int.from_bytes(area[i + 20:i + 24], "little"))
            elif sig == b"ST":
                break
            i += length
        seen += 1
        if ce is None or seen > 16:
            break
        image.seek(ce[0] * block + ce[1])
        area = image.read(min(ce[2], block))
    if parts:
        return b"".join(parts)
    name = iso_name.split(b";", 1)[0]
    return name[:-1] if name.endswith(b".") else name


def _directory_records(image, extent: int, length: int, block: int):
    """Yield the records of one directory extent, read a sector at a time.

    Records never cross a sector; a zero length byte pads to the next one.
    """
    for sector in range((length + block - 1) // block):
        image.seek((extent + sector) * block)
        data = image.read(min(block, length - sector * block))
        i = 0
        while i < len(data) and data[i]:
            size = data[i]
            if size < 34 or i + size > len(data):
                raise ValueError(f"a malformed directory record in sector {extent + sector}")
            yield data[i:i + size]
            i += size


def _hash_extents(image, extents: list[tuple[int, int]], block: int,
                  meter: Meter) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for extent, length in extents:
        image.seek(extent * block)
        left = length
        while left > 0:
            chunk = image.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
            left -= len(chunk)
            meter.add(len(chunk))
    return h.hexdigest(), size


def verify_iso(iso_path: Path, files: Iterable[tuple[str, str, int]], *,
               progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
    """Compare the files inside an ISO image (by their Rock Ridge names) with a manifest.

    The image's directory tree is walked record by record straight from the
    image (primary volume descriptor, then each directory's extent, a sector
    at a time), and each file of the manifest is hashed from its extents as
    its record is met.  Nothing of the tree is kept beyond the directories
    still to visit (an in-memory parse of the whole image took about 3 kB
    per file), and the manifest is looked up in a table of a scratch
    database next to the image (:mod:`.scratch`) rather than a dict, so
    memory does not grow with the number of files.
    """
    with _open_image(iso_path) as image, \
            scratch.scratch_db(Path(iso_path).parent, ".verify-") as db:
        # A line listed twice counts once, with its last values (as in a dict).
        db.execute("CREATE TABLE expected (path TEXT PRIMARY KEY, sha256 TEXT, size INTEGER)")
        db.executemany("INSERT INTO expected VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE "
                       "SET sha256 = excluded.sha256, size = excluded.size", files)
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM expected").fetchone()
        meter = Meter(total, progress, cancel)
        try:
            image.seek(_PVD_SECTOR * SECTOR)
            pvd = image.read(SECTOR)
            if len(pvd) < SECTOR or pvd[0] != 1 or pvd[1:6] != b"CD001":
                raise _bad_image(iso_path, "no primary volume descriptor")
            block = int.from_bytes(pvd[128:130], "little")
            if block not in (512, 1024, 2048):
                raise _bad_image(iso_path, f"a logical block of {block} bytes")
            root = pvd[156:190]
            pending = [("", int.from_bytes(root[2:6], "little") + root[1],
                        int.from_bytes(root[10:14], "little"))]
            visited: set[int] = set()
            while pending:
                prefix, extent, length = pending.pop()
                if extent in visited:
                    raise _bad_image(iso_path, f"directory {prefix or '/'} is listed twice")
                visited.add(extent)
                parts: list[tuple[int, int]] = []
                for record in _directory_records(image, extent, length, block):
                    if record[32] == 1 and record[33] in (0, 1):
                        continue                     # "." and ".."
                    flags = record[25]
                    # A file's data follows its extended attribute record, if any.
                    start = int.from_bytes(record[2:6], "little") + record[1]
                    size = int.from_bytes(record[10:14], "little")
                    rel = prefix + _record_name(image, record, block).decode("latin-1")
                    if flags & _DIRECTORY:
                        pending.append((rel + "/", start, size))
                        continue
                    parts.append((start, size))
                    if flags & _MULTI_EXTENT:
                        continue                     # the file goes on in the next record
                    extents, parts = parts, []
                    want = db.execute("SELECT sha256, size FROM expected WHERE path = ?",
                                      (rel,)).fetchone()
                    if want is None:
                        continue                     # not in the manifest, or met already
                    db.execute("DELETE FROM expected WHERE path = ?", (rel,))
                    got_sha, got_size = _hash_extents(image, extents, block, meter)
                    if got_size != want[1] or got_sha != want[0]:
                        raise MediaError("verify-failed", f"{rel} differs in the image")
        except ValueError as exc:
            raise _bad_image(iso_path, str(exc)) from exc
        except OSError as exc:
            raise MediaError("verify-failed",
                             f"cannot read {iso_path.name} back: {exc.strerror or exc}") from exc
        (left,) = db.execute("SELECT COUNT(*) FROM expected").fetchone()
        if left:
            # The first one in the manifest's order.
            (rel,) = db.execute("SELECT path FROM expected ORDER BY rowid LIMIT 1").fetchone()
            raise MediaError("verify-failed", f"{rel} is missing from the image"
                             + (f" (and {left - 1} more)" if left > 1 else ""))
    meter.finish()
