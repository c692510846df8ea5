"""Private SQLite files for what a job step would otherwise keep per instance in memory.

Building a file-set sorts every instance and remembers where its directory
record lies; checking an image looks every file of the manifest up.  Held as
Python objects that is some hundreds of bytes per instance, so the media
service's memory would follow the size of the job.  A scratch database
keeps those rows on disk instead, with a small page cache (what SQLite
caches of it is bounded by :data:`CACHE_KIB`, whatever the number of rows).

The file lives in a folder the caller chooses: next to the file-set or the
image, on the data partition.  Not in ``/tmp``: on the appliance that is a
``tmpfs`` (memory again).  It is written without a journal and without
syncs, in one transaction that is never committed on purpose: nothing in it
has to survive the step, and the file is removed when the step ends (a
crash leaves it in a work folder that the next attempt removes).  Queries
on it must be answered from an index (a sort would spill into SQLite's
temporary directory, ``/var/tmp``, which is a ``tmpfs`` on the appliance too).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The page cache of a scratch database, in KiB (an index connection keeps as much).
CACHE_KIB = 512


def open_db(directory: Path | None, prefix: str) -> sqlite3.Connection:
    """A private SQLite database in a new file of ``directory``; :func:`close` removes it.

    When ``directory`` cannot take the file (read-only, gone) the system's
    temporary folder is used instead.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".db", dir=directory)
    except OSError:
        if directory is None:
            raise
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".db")
    os.close(fd)
    conn = None
    try:
        conn = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        conn.execute("BEGIN")
    except BaseException:
        if conn is not None:
            conn.close()
        os.unlink(name)
        raise
    return conn


def close(conn: sqlite3.Connection) -> None:
    """Close a database of :func:`open_db` and remove its file (again: nothing happens)."""
    name = conn.execute("PRAGMA database_list").fetchone()[2] if _is_open(conn) else ""
    conn.close()
    if name:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def _is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.total_changes  # noqa: B018 - raises once the connection is closed
    except sqlite3.ProgrammingError:
        return False
    return True


@contextmanager
def scratch_db(directory: Path | None, prefix: str) -> Iterator[sqlite3.Connection]:
    """:func:`open_db` for the length of a ``with`` block."""
    conn = open_db(directory, prefix)
    try:
        yield conn
    finally:
        close(conn)
