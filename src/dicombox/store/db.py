"""SQLite with the durability settings the box relies on, and named migrations.

Each module that owns tables declares its :class:`Migration` list; a
migration runs once, recorded by name, so services and modules add their own
tables without a shared version number.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def connect(path: Path, readonly: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in WAL mode with ``synchronous=FULL`` and foreign keys on."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout,
                               check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    # 512 KiB of page cache per connection instead of SQLite's 2 MB: each
    # thread that reads has its own connection, and the pages are in the
    # operating system's cache anyway (no measurable cost on receive).
    conn.execute("PRAGMA cache_size=-512")
    conn.row_factory = sqlite3.Row
    return conn


class Database:
    """One SQLite file, one writer connection guarded by a lock.

    ``write()`` yields the connection inside ``BEGIN IMMEDIATE`` and commits
    (durably, with ``synchronous=FULL``) when the block ends without error.
    ``read()`` uses a per-thread connection so readers never wait on the lock.
    """

    def __init__(self, path: Path, migrations: Iterable[Migration] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        self.migrate(migrations)

    def migrate(self, migrations: Iterable[Migration]) -> None:
        with self.write() as conn:
            done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
            for m in migrations:
                if m.name in done:
                    continue
                for statement in _split(m.sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO migrations VALUES (?, strftime('%s','now'))",
                             (m.name,))

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """``durable=False`` commits without syncing the WAL (``synchronous=NORMAL``):
        only for changes whose loss on a power cut is harmless.  Such a commit
        becomes durable with the next durable one (the WAL is one file, synced
        whole, and recovery keeps a prefix of the commits), so nothing derived
        from it durably can outlive it."""
        with self._lock:
            if not durable:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                else:
                    self._conn.execute("COMMIT")
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=FULL")

    def read_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self.read_conn().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        return self.read_conn().execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def _split(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
