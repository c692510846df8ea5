"""Fixtures for the panel: gpiozero mock pins and services' state on disk."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from dicombox.config import load
from dicombox.mpps import journal as mpps_journal
from dicombox.store import InstanceStore
from dicombox.store.db import Database, Migration

from helpers import write_config

#: The media service's tables as it publishes them (``<state_dir>/media/index.db``).
MEDIA_SCHEMA = Migration("test-media-1", """
    CREATE TABLE IF NOT EXISTS service_state (
        key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS media_jobs (
        id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at REAL, updated_at REAL,
        error TEXT, progress REAL);
    CREATE TABLE IF NOT EXISTS media_commands (
        id INTEGER PRIMARY KEY, command TEXT NOT NULL, job_id TEXT, created_at REAL NOT NULL,
        handled_at REAL, result TEXT)
""")

SERVICE_STATE = Migration("test-state-1", """
    CREATE TABLE IF NOT EXISTS service_state (
        key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)
""")

FORWARD_QUEUE = Migration("test-forward-1", """
    CREATE TABLE IF NOT EXISTS forward_queue (
        id INTEGER PRIMARY KEY, instance_id INTEGER, destination TEXT, state TEXT NOT NULL)
""")


@pytest.fixture
def mock_factory():
    """A gpiozero MockFactory with PWM-capable pins, reset after the test."""
    saved = Device.pin_factory
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()
    factory.close()
    Device.pin_factory = saved


class BoxDisk:
    """The services' indexes under one state directory, written as the
    services write them, so that the panel reads real SQLite files."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self._dbs: dict[str, Database] = {}
        self._router: InstanceStore | None = None

    def db(self, service: str) -> Database:
        if service not in self._dbs:
            if service == "router":
                self._router = InstanceStore(self.state_dir, "router", reserve_bytes=0,
                                             duplicates="replace", migrations=[])
                self._dbs[service] = self._router.db
            elif service == "mpps":
                self._dbs[service] = Database(self.state_dir / service / "index.db",
                                              mpps_journal.MIGRATIONS)
            else:
                migrations = [MEDIA_SCHEMA] if service == "media" else [SERVICE_STATE]
                self._dbs[service] = Database(self.state_dir / service / "index.db",
                                              migrations)
        return self._dbs[service]

    def publish(self, service: str, at: float | None = None, **fields) -> None:
        """A service's snapshot, as its housekeeper writes it."""
        now = time.time() if at is None else at
        snap = {"pid": 1, "active_associations": 0, "counters": {}, "free_bytes": 10**10,
                "reserve_bytes": 10**8, "updated_at": now, **fields}
        with self.db(service).write() as conn:
            conn.execute("INSERT INTO service_state VALUES (?, ?, ?) ON CONFLICT(key) DO "
                         "UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                         (service, json.dumps(snap), now))

    def all_up(self, **fields) -> None:
        for service in ("router", "mpps", "media"):
            self.publish(service, **fields)

    def dead_letter(self, count: int = 1) -> None:
        db = self.db("router")
        db.migrate([FORWARD_QUEUE])
        with db.write() as conn:
            for _ in range(count):
                conn.execute("INSERT INTO forward_queue (instance_id, destination, state) "
                             "VALUES (1, 'PACS', 'dead')")
            conn.execute("INSERT INTO forward_queue (instance_id, destination, state) "
                         "VALUES (2, 'PACS', 'pending')")

    def mpps_dead_delivery(self) -> None:
        """A relayed N-CREATE that its destination refused for good."""
        with self.db("mpps").write() as conn:
            conn.execute("INSERT INTO steps (sop_instance_uid, state, dataset, created_at, "
                         "updated_at) VALUES ('1.2.3', 'IN PROGRESS', x'', 0, 0)")
            conn.execute("INSERT INTO messages (sop_instance_uid, seq, operation, dataset, "
                         "state_after, received_at) "
                         "VALUES ('1.2.3', 1, 'N-CREATE', x'', 'IN PROGRESS', 0)")
            conn.execute("INSERT INTO deliveries (message_id, destination, sop_instance_uid, "
                         "seq, state, next_attempt_at, created_at) "
                         "VALUES (1, 'RIS', '1.2.3', 1, 'dead', 0, 0)")

    def job(self, job_id: str, state: str, at: float | None = None) -> None:
        now = time.time() if at is None else at
        with self.db("media").write() as conn:
            conn.execute("INSERT INTO media_jobs (id, state, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                         "state = excluded.state, updated_at = excluded.updated_at",
                         (job_id, state, now, now))

    def command(self, command: str, job_id: str | None = None, at: float | None = None):
        with self.db("media").write() as conn:
            conn.execute("INSERT INTO media_commands (command, job_id, created_at) "
                         "VALUES (?, ?, ?)", (command, job_id, time.time() if at is None else at))

    def commands(self) -> list[tuple]:
        rows = self.db("media").query("SELECT command, job_id FROM media_commands ORDER BY id")
        return [tuple(r) for r in rows]

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
            self._dbs.pop("router")
        for db in self._dbs.values():
            db.close()


@pytest.fixture
def disk(tmp_path):
    d = BoxDisk(tmp_path / "state")
    yield d
    d.close()


@pytest.fixture
def panel_config(tmp_path):
    """A configuration whose state directory is the ``disk`` fixture's."""

    def make(**panel):
        path = write_config(tmp_path, panel=panel)
        return load(path)

    return make


def with_panel(config, **panel):
    return dataclasses.replace(config, panel=dataclasses.replace(config.panel, **panel))
