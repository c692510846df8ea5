"""The durability floor: what the contract's flushes alone cost on this machine.

storescp answers a C-STORE as soon as its file is written; the router only
once the instance is durable.  DCMTK's storescu sends the next instance only
after that answer, so whatever the router must flush after an instance's
last byte adds to the transfer time, however fast the rest of it is.

This measures that part in the best case, for every instance of a data set
(or an even sample of them), on the file system the router uses in the same
run, with nothing else in the way: no network, no Python per instance
beyond a few calls, the instance's data already written out by the kernel
(``sync_file_range``, as the receive path starts it while the data arrives).
What is timed is what remains to do after the last byte, in the order the
store does it (``dicombox.store.instances``):

- an instance larger than the journal's limit: rename into its folder, fsync
  the file (its inode and the disk's cache flush), fsync the folder, commit
  a row (SQLite in WAL mode, ``synchronous=FULL``, the store's own settings);
- a smaller one: commit its row with its bytes (``dicombox.store.journal``).

The sum is a lower bound of what the contract adds to storescp's time, so
``storescp / (storescp + floor)`` is an upper bound of the receive ratio
reachable with fsync on, on this machine, by any implementation that keeps
the contract and answers each C-STORE on its own.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from dicombox.store.db import connect
from dicombox.store.fsutil import (
    SYNC_FILE_RANGE,
    SYNC_FILE_RANGE_WAIT_AFTER,
    SYNC_FILE_RANGE_WAIT_BEFORE,
    SYNC_FILE_RANGE_WRITE,
    fsync_dir,
)
from dicombox.store.journal import JOURNAL_MAX_BYTES

#: Instances measured at most per data set (evenly spread); the sum is scaled.
SAMPLE = 400



_TABLE = """CREATE TABLE rows (id INTEGER PRIMARY KEY, sop_instance_uid TEXT UNIQUE,
    study_instance_uid TEXT, series_instance_uid TEXT, sop_class_uid TEXT, path TEXT,
    size INTEGER, sha256 TEXT, received_at REAL, data BLOB)"""


def _write_out(path: Path, source: Path) -> int:
    """Copy ``source`` to ``path`` and wait until the kernel wrote the data
    (not the inode, not the disk's cache): untimed, as the receive path
    overlaps it with the network.  Returns the open descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(source, "rb") as src:
        while block := src.read(1 << 20):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
    if SYNC_FILE_RANGE is not None:
        SYNC_FILE_RANGE(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE
                         | SYNC_FILE_RANGE_WAIT_AFTER)
    return fd


def measure(files: list[Path], work: Path) -> dict | None:
    """The floor for ``files`` (seconds, summed over all of them), measured
    in ``work``; ``None`` where the kernel cannot write a range out ahead
    (the best case could not be set up, and a worse one is no floor)."""
    if SYNC_FILE_RANGE is None or not files:
        return None
    step = max(1, -(-len(files) // SAMPLE))
    sample = files[::step]
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    (work / "spool").mkdir()
    conn = connect(work / "floor.db")
    conn.execute(_TABLE)
    times, journaled = [], 0
    try:
        for i, source in enumerate(sample):
            size = source.stat().st_size
            row = (f"1.2.3.{i}", "1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2",
                   f"spool/{i}.dcm", size, "0" * 64, time.time())
            if size <= JOURNAL_MAX_BYTES:
                journaled += 1
                data = source.read_bytes()
                start = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO rows (sop_instance_uid, study_instance_uid, "
                             "series_instance_uid, sop_class_uid, path, size, sha256, "
                             "received_at, data) VALUES (?,?,?,?,?,?,?,?,?)", (*row, data))
                conn.execute("COMMIT")
                times.append(time.perf_counter() - start)
                continue
            tmp = work / "tmp" / f"{i}.dcm"
            fd = _write_out(tmp, source)
            try:
                start = time.perf_counter()
                os.rename(tmp, work / "spool" / f"{i}.dcm")
                os.fsync(fd)
                fsync_dir(work / "spool")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO rows (sop_instance_uid, study_instance_uid, "
                             "series_instance_uid, sop_class_uid, path, size, sha256, "
                             "received_at) VALUES (?,?,?,?,?,?,?,?)", row)
                conn.execute("COMMIT")
                times.append(time.perf_counter() - start)
            finally:
                os.close(fd)
            # Kept small: the spool of a 1 GiB instance is not needed twice.
            os.unlink(work / "spool" / f"{i}.dcm")
    finally:
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    per_instance = sum(times) / len(times)
    return {"seconds": per_instance * len(files), "per_instance_seconds": per_instance,
            "measured": len(times), "journaled": journaled}


def ceiling(reference_seconds: float | None, floor: dict | None) -> float | None:
    """Best ratio to ``reference_seconds`` reachable with the floor added."""
    if not reference_seconds or not floor:
        return None
    return reference_seconds / (reference_seconds + floor["seconds"])
