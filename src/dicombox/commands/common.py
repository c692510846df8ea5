"""Helpers for commands that read a service's index without the service running."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from ..cli import CliError
from ..store.db import connect


def open_index(state_dir: Path, service: str) -> sqlite3.Connection | None:
    path = Path(state_dir) / service / "index.db"
    if not path.exists():
        return None
    return connect(path, readonly=True)


def require_index(state_dir: Path, service: str) -> sqlite3.Connection:
    conn = open_index(state_dir, service)
    if conn is None:
        raise CliError(f"no {service} index under {state_dir} (has the {service} service "
                       "ever run with this configuration?)")
    return conn


def service_snapshot(conn: sqlite3.Connection, key: str) -> dict | None:
    try:
        row = conn.execute("SELECT value, updated_at FROM service_state WHERE key = ?",
                           (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    if row is None:
        return None
    snap = json.loads(row["value"])
    snap["age"] = time.time() - row["updated_at"]
    return snap


def parse_date(text: str) -> float:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d",
                "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    raise CliError(f"cannot read the date {text!r} (use YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS')",
                   2)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def disk_free(path: Path) -> int | None:
    p = Path(path)
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Print ``rows`` as aligned columns; ``columns`` is (key, heading)."""
    cells = [[h for _, h in columns]]
    for r in rows:
        cells.append(["" if r.get(k) is None else str(r.get(k)) for k, _ in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
