"""Small instances made durable through the index's write-ahead log.

Making a received file durable the usual way costs three syncs before the
answer: the file, the directory that gained its name, and the index's
commit.  For a small instance (a few kilobytes: a secondary capture, an SR,
a presentation state) those syncs are nearly all of its cost.  Instead, its
bytes are committed *inside* the transaction that indexes it, in the
``pending_files`` table: one sync (the SQLite WAL's) covers the data and the
row, and the C-STORE is answered.  The file itself has been written and
renamed into the spool as usual, so every reader finds it at once.

A :class:`Flusher` thread then makes those files durable in the background
(one ``syncfs`` of the spool's file system for everything that arrived
since its last round) and only afterwards deletes their ``pending_files``
rows.  After a crash or a power cut, :func:`restore` rewrites every file
whose row is still pending from the committed bytes before the service
accepts anything, so what was acknowledged is on disk either way.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

from .fsutil import atomic_write, libc_function

LOGGER = logging.getLogger("dicombox.store")

#: Instances up to this size are journaled (they are kept in memory whole
#: while received anyway); larger ones are fsync'd in place.
JOURNAL_MAX_BYTES = 64 * 1024
#: Rows deleted per statement once their files are durable.
_DELETE_CHUNK = 500
#: A round starts this long after the first file noted for it, or as soon as
#: :data:`FLUSH_BATCH` are noted: one ``syncfs`` and one commit cover them all
#: instead of competing with the receive path for the disk on every instance.
FLUSH_DELAY = 0.1
FLUSH_BATCH = 1000


_SYNCFS = libc_function("syncfs", [ctypes.c_int])


def sync_filesystem(path: Path) -> None:
    """Flush every written file and directory of the file system holding ``path``."""
    if _SYNCFS is None:  # pragma: no cover - every Linux C library has syncfs
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def restore(db, spool_dir: Path, tmp_dir: Path) -> int:
    """Rewrite the files of every still-pending journaled instance; return how many.

    Runs before the service accepts anything.  A pending row whose instance
    has since been replaced or deleted is only dropped.
    """
    rows = db.query("SELECT p.path, p.data FROM pending_files p "
                    "JOIN instances i ON i.path = p.path")
    for row in rows:
        atomic_write(spool_dir / row["path"], bytes(row["data"]), tmp_dir=tmp_dir)
    with db.write() as conn:
        conn.execute("DELETE FROM pending_files")
    return len(rows)


class Flusher:
    """Makes journaled files durable in the background, then drops their rows."""

    def __init__(self, db, spool_dir: Path, name: str):
        self.db = db
        self.spool_dir = spool_dir
        self._cond = threading.Condition()
        self._paths: list[str] = []
        self._stopping = False
        self._draining = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-flusher",
                                        daemon=True)
        self._thread.start()
        #: Rounds made and files flushed (a round covers what arrived meanwhile).
        self.rounds = 0
        self.flushed = 0

    def add(self, path: str) -> None:
        """Note a journaled file (committed already) for the next round."""
        with self._cond:
            self._paths.append(path)
            if len(self._paths) in (1, FLUSH_BATCH):
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._paths and not self._stopping:
                    self._cond.wait()
                if not self._paths and self._stopping:
                    return
                self._cond.wait_for(lambda: self._stopping or self._draining
                                    or len(self._paths) >= FLUSH_BATCH, FLUSH_DELAY)
                paths, self._paths = self._paths, []
                self._busy = True
            try:
                self._flush(paths)
            except Exception:  # noqa: BLE001 - the rows stay pending: restored at start
                LOGGER.exception("cannot make %d journaled files durable; they stay in "
                                 "the index's journal", len(paths))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _flush(self, paths: list[str]) -> None:
        sync_filesystem(self.spool_dir)
        for i in range(0, len(paths), _DELETE_CHUNK):
            chunk = paths[i:i + _DELETE_CHUNK]
            with self.db.write() as conn:
                conn.execute(f"DELETE FROM pending_files WHERE path IN "
                             f"({', '.join('?' for _ in chunk)})", chunk)
        self.rounds += 1
        self.flushed += len(paths)

    def drain(self, timeout: float | None = None) -> bool:
        """Flush what is noted now, and wait until it is done."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._paths and not self._busy,
                                           timeout)
            finally:
                self._draining = False

    def stop(self) -> None:
        """Flush what is noted, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
