"""The box's state as the panel sees it, read from the services' SQLite indexes.

Every service publishes a snapshot in ``<state_dir>/<service>/index.db``,
table ``service_state`` (key = the service's name, value = JSON with
``active_associations``, ``free_bytes``, ``reserve_bytes``, ``stopped``…,
``updated_at`` = when it was written).  The panel opens these files
read-only and derives one :class:`BoxState`; a file or table that does not
exist yet (a service that never ran, an older schema) reads as "nothing to
show", never as an exception.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..store.db import connect

LOGGER = logging.getLogger("dicombox.panel")

#: Services whose health the panel shows (the panel itself is not one of them).
WATCHED_SERVICES = ("router", "mpps", "media")

#: Where dead-letter items live: (service, table, SQL condition).
DEAD_LETTER_SOURCES = (
    ("router", "forward_queue", "state = 'dead'"),
    ("mpps", "deliveries", "state = 'dead'"),
    ("mpps", "notifications", "state = 'dead'"),
)

#: media_jobs states, grouped by what the media LED shows.
MEDIA_ACTIVE = ("building", "writing", "verifying")
MEDIA_FINISHED = ("done", "failed", "cancelled")

#: Media phases, in the order the LED table documents them.
MEDIA_PHASES = ("idle", "collecting", "waiting", "burning", "done", "failed")


@dataclass(frozen=True)
class BoxState:
    """Everything the LEDs and the button depend on."""

    #: (service, "up" | "starting" | "down") for every enabled service.
    services: tuple[tuple[str, str], ...] = ()
    associations: int = 0
    disk_reserve: bool = False
    dead_letters: int = 0
    #: One of :data:`MEDIA_PHASES`.
    media: str = "idle"
    #: The media job the phase refers to (None when idle).
    media_job: str | None = None
    details: dict = field(default_factory=dict, compare=False)

    @property
    def starting(self) -> bool:
        return any(s == "starting" for _, s in self.services)

    @property
    def service_down(self) -> bool:
        return any(s == "down" for _, s in self.services)

    def summary(self) -> dict:
        return {"services": dict(self.services), "associations": self.associations,
                "disk_reserve": self.disk_reserve, "dead_letters": self.dead_letters,
                "media": self.media, "media_job": self.media_job}


class _Index:
    """A read-only connection to one service's index, reopened after errors."""

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._complained = False

    def query(self, sql: str, params=()) -> list[sqlite3.Row] | None:
        """Rows, or None when the file or the table does not exist (yet)."""
        if self._conn is None:
            if not self.path.exists():
                return None
            try:
                self._conn = connect(self.path, readonly=True, timeout=2.0)
            except sqlite3.Error as exc:
                self._complain(exc)
                return None
        try:
            rows = self._conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            self._complain(exc)
            self.close()
            return None
        except sqlite3.Error as exc:
            self._complain(exc)
            self.close()
            return None
        self._complained = False
        return rows

    def _complain(self, exc: Exception) -> None:
        # One line per episode, not one per poll.
        if not self._complained:
            LOGGER.warning("cannot read %s: %s", self.path, exc)
            self._complained = True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class StateReader:
    """Reads :class:`BoxState` from ``state_dir``.

    A service is *up* while its snapshot is fresher than ``stale_after`` and
    not marked stopped.  During ``startup_grace`` seconds after the reader is
    created (the box is booting: every snapshot still says "stopped" from the
    last shutdown) a service that is not up counts as *starting*; later as
    *down*.
    """

    def __init__(self, state_dir: Path, services: Iterable[str], stale_after: float = 20.0,
                 startup_grace: float = 60.0, clock: Callable[[], float] = time.time):
        self.state_dir = Path(state_dir)
        self.services = tuple(services)
        self.stale_after = stale_after
        self.startup_grace = startup_grace
        self.clock = clock
        self.started_at = clock()
        self._indexes: dict[str, _Index] = {}

    def index(self, service: str) -> _Index:
        if service not in self._indexes:
            self._indexes[service] = _Index(self.state_dir / service / "index.db")
        return self._indexes[service]

    def snapshot(self, service: str) -> tuple[dict, float] | None:
        rows = self.index(service).query(
            "SELECT value, updated_at FROM service_state WHERE key = ?", (service,))
        if not rows:
            return None
        try:
            value = json.loads(rows[0]["value"])
        except (TypeError, ValueError):
            return None
        return (value if isinstance(value, dict) else {}), float(rows[0]["updated_at"])

    def read(self) -> BoxState:
        now = self.clock()
        booting = now - self.started_at < self.startup_grace
        health, snaps = [], {}
        for name in self.services:
            snap = self.snapshot(name)
            up = (snap is not None and not snap[0].get("stopped")
                  and now - snap[1] <= self.stale_after)
            if up:
                snaps[name] = snap[0]
            health.append((name, "up" if up else ("starting" if booting else "down")))
        associations = sum(_int(s.get("active_associations")) for s in snaps.values())
        disk_reserve = any(
            _int(s.get("reserve_bytes")) > 0
            and _int(s.get("free_bytes"), default=None) is not None
            and _int(s.get("free_bytes")) <= _int(s.get("reserve_bytes"))
            for s in snaps.values())
        media, job = ("idle", None)
        if "media" in self.services:
            media, job = self.media_phase()
        return BoxState(services=tuple(health), associations=associations,
                        disk_reserve=disk_reserve, dead_letters=self.dead_letters(),
                        media=media, media_job=job)

    def dead_letters(self) -> int:
        total = 0
        for service, table, condition in DEAD_LETTER_SOURCES:
            if service not in self.services:
                continue
            rows = self.index(service).query(f"SELECT COUNT(*) FROM {table} WHERE {condition}")
            if rows:
                total += rows[0][0]
        return total

    def media_phase(self) -> tuple[str, str | None]:
        """(phase, job id) from ``media_jobs`` and ``media_commands``."""
        idx = self.index("media")
        marks = ", ".join("?" for _ in MEDIA_ACTIVE)
        rows = idx.query(f"SELECT id FROM media_jobs WHERE state IN ({marks}) "
                         "ORDER BY updated_at, id LIMIT 1", MEDIA_ACTIVE)
        if rows is None:
            return "idle", None
        if rows:
            return "burning", rows[0]["id"]
        for state, phase in (("ready", "waiting"), ("collecting", "collecting")):
            rows = idx.query("SELECT id FROM media_jobs WHERE state = ? "
                             "ORDER BY created_at, id LIMIT 1", (state,))
            if rows:
                return phase, rows[0]["id"]
        marks = ", ".join("?" for _ in MEDIA_FINISHED)
        rows = idx.query(f"SELECT id, state, updated_at FROM media_jobs WHERE state IN "
                         f"({marks}) ORDER BY updated_at DESC, id DESC LIMIT 1", MEDIA_FINISHED)
        if not rows or rows[0]["state"] == "cancelled":
            return "idle", None
        last = rows[0]
        # Ejecting the medium acknowledges the result: the LED goes dark.
        ejected = idx.query("SELECT MAX(created_at) FROM media_commands WHERE command = 'eject'")
        if ejected and ejected[0][0] is not None and ejected[0][0] >= (last["updated_at"] or 0):
            return "idle", None
        return ("done" if last["state"] == "done" else "failed"), last["id"]

    def close(self) -> None:
        for idx in self._indexes.values():
            idx.close()


def _int(value, default: int | None = 0) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value)
