"""The panel service: LEDs and button on GPIO, fed by the services' state on disk.

Failure policy: the panel must never disturb the services it shows.  It
only reads their indexes (and inserts rows into the media service's command
table); a file it cannot read shows as "nothing there".  If its worker dies
the watchdog restarts the process; with ``panel.gpio = "required"`` a board
whose pins cannot be opened keeps the service from starting, so systemd
reports it failed instead of an unlit panel looking like a dead box.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable

from ..config import Config
from ..lifecycle import Service, Worker
from ..store.db import Database, Migration
from .commands import CommandError, send_media_command
from .hardware import GpioUnavailable, LedRenderer, PanelHardware, gpio_present
from .state import WATCHED_SERVICES, BoxState, StateReader
from .table import button_action, led_patterns

LOGGER = logging.getLogger("dicombox.panel")

MIGRATIONS = [
    Migration("panel-state-1", """
        CREATE TABLE IF NOT EXISTS service_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
    """),
]

#: Seconds between two snapshots when nothing changes: often enough for
#: `dicombox status` to tell a live panel (20 s), rarely enough to spare the SD card.
PUBLISH_INTERVAL = 10.0


class PanelWorker(Worker):
    """Reads the box's state every ``poll_interval`` and drives the LEDs."""

    def __init__(self, service: PanelService, monotonic: Callable[[], float] = time.monotonic):
        super().__init__("panel")
        self.service = service
        self.monotonic = monotonic
        self._next_poll = 0.0
        self._last_publish = -PUBLISH_INTERVAL

    def step(self) -> float:
        svc = self.service
        now = self.monotonic()
        if now >= self._next_poll:
            svc.state = svc.reader.read()
            changed = svc.renderer.show(led_patterns(svc.state), now)
            if changed or now - self._last_publish >= PUBLISH_INTERVAL:
                svc.publish()
                self._last_publish = now
            self._next_poll = now + svc.config.panel.poll_interval
        wait = svc.renderer.render(now)
        return max(0.005, min(wait, self._next_poll - now))


class PanelService(Service):
    name = "panel"

    def __init__(self, config: Config, port: int | None = None, pin_factory=None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.pin_factory = pin_factory
        self.clock = clock
        self.hardware: PanelHardware | None = None
        self.db: Database | None = None
        self._db_complained = False
        self.worker: PanelWorker | None = None
        self.state = BoxState()
        self.presses: list[dict] = []
        self.started_at = clock()
        cfg = config.panel
        self.services = [n for n in WATCHED_SERVICES
                         if getattr(getattr(config, n), "enabled", True)]
        self.reader = self._reader()
        # Button presses run on gpiozero's threads: they get their own connections.
        self._button_reader = self._reader()
        self.renderer = LedRenderer(cfg, None)

    def _reader(self) -> StateReader:
        cfg = self.config.panel
        return StateReader(self.config.box.state_dir, self.services,
                           stale_after=cfg.stale_after, startup_grace=cfg.startup_grace,
                           clock=self.clock)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config.panel
        self._open_db()
        self.hardware = self._open_hardware(cfg.gpio)
        if self.hardware is not None:
            self.renderer.set_level = self.hardware.set_level
            self.hardware.on_press(self.on_press)
        self.worker = PanelWorker(self)
        self.worker.start()

    def _open_db(self) -> Database | None:
        """The panel's own index, where it publishes what the LEDs show.

        Not being able to write it (a data partition that is missing or not
        yet set up) must not keep the LEDs dark: the panel runs on and tries
        again at the next publication.
        """
        if self.db is None:
            try:
                self.db = Database(self.config.box.state_dir / "panel" / "index.db",
                                   MIGRATIONS)
            except (OSError, sqlite3.Error) as exc:
                if not self._db_complained:
                    LOGGER.warning("panel: cannot write its state under %s: %s",
                                   self.config.box.state_dir, exc)
                    self._db_complained = True
        return self.db

    def _open_hardware(self, mode: str) -> PanelHardware | None:
        if mode == "off":
            LOGGER.info("panel: GPIO is off in the configuration; LED states are only "
                        "published")
            return None
        if mode == "optional" and self.pin_factory is None and not gpio_present():
            LOGGER.warning("panel: this machine has no GPIO chip; running without LEDs")
            return None
        try:
            hw = PanelHardware(self.config.panel, pin_factory=self.pin_factory)
        except GpioUnavailable as exc:
            if mode == "required":
                raise
            LOGGER.warning("panel: %s; running without LEDs", exc)
            return None
        LOGGER.info("panel: LEDs and button on %s", hw.factory)
        return hw

    def healthy(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def status(self) -> str:
        leds = ", ".join(f"{k} {v}" for k, v in self.renderer.current().items())
        gpio = self.hardware.factory if self.hardware else "no GPIO"
        return f"panel ({gpio}): {leds or 'starting'}"

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.hardware is not None:
            self.hardware.close()
        if self.db is not None:
            self.publish(stopped=True)
        if self.db is not None:
            self.db.close()
            self.db = None
        self.reader.close()
        self._button_reader.close()

    # -- state -------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {
            "pid": os.getpid(),
            "gpio": self.hardware.factory if self.hardware else None,
            "leds": self.renderer.current(),
            "box": self.state.summary(),
            "presses": self.presses[-5:],
            "active_associations": 0,
            "started_at": self.started_at,
            "updated_at": self.clock(),
        }

    def publish(self, stopped: bool = False) -> None:
        if self._open_db() is None:
            return
        snap = self.snapshot()
        if stopped:
            snap["stopped"] = True
        try:
            with self.db.write() as conn:
                conn.execute("INSERT INTO service_state VALUES (?, ?, ?) ON CONFLICT(key) DO "
                             "UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                             ("panel", json.dumps(snap), self.clock()))
        except sqlite3.Error as exc:
            # A data partition remounted read-only, say: the LEDs matter more.
            LOGGER.warning("panel: cannot publish its state: %s", exc)
            self.db.close()
            self.db = None

    # -- the button --------------------------------------------------------------

    def on_press(self, press: str) -> dict:
        """Turn a ``"short"``/``"long"`` press into a media command (gpiozero's thread)."""
        state = self._button_reader.read()
        action = button_action(press, state)
        record = {"press": press, "media": state.media, "at": self.clock()}
        if action is None:
            LOGGER.info("panel: %s press while media is %s: nothing to do", press, state.media)
        else:
            command, job = action
            record.update(command=command, job_id=job)
            try:
                record["row"] = send_media_command(self.config.box.state_dir, command, job)
                LOGGER.info("panel: %s press: %s %s", press, command, job or "")
            except CommandError as exc:
                record["error"] = str(exc)
                LOGGER.error("panel: %s press: %s", press, exc)
        self.presses.append(record)
        del self.presses[:-20]
        return record
