"""Hand a button press to the media service as a row in its command table.

The media service owns ``<state_dir>/media/index.db`` and its
``media_commands`` table (``id, command, job_id, created_at, handled_at,
result``); it executes each row and records ``handled_at``/``result``.  The
panel only ever inserts: it opens the existing file read-write (never
creating it) for one committed ``INSERT`` with ``synchronous=FULL``, so a
press that was acknowledged by the LED is not lost by a power cut.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


class CommandError(RuntimeError):
    """The media service's command table cannot take the command."""


def media_index(state_dir: Path) -> Path:
    return Path(state_dir) / "media" / "index.db"


def send_media_command(state_dir: Path, command: str, job_id: str | None = None,
                       now: float | None = None) -> int:
    """Insert ``command`` for ``job_id``; return the row id."""
    path = media_index(state_dir)
    if not path.exists():
        raise CommandError(f"no media index at {path} (is the media service running?)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5.0,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise CommandError(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "INSERT INTO media_commands (command, job_id, created_at) VALUES (?, ?, ?)",
            (command, job_id, time.time() if now is None else now))
        conn.execute("COMMIT")
        return cur.lastrowid
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise CommandError(f"cannot queue {command!r} in {path}: {exc}") from exc
    finally:
        conn.close()
