"""The mpps service (Data-Router): MPPS SCP, journal, relay and RIS notifications.

Failure policy: nothing acknowledged is lost.  An N-CREATE/N-SET is answered
with success only after it is journaled; anything unexpected in a handler is
answered with a failure status (the modality keeps its message and sends it
again).  A dead worker makes the service unhealthy so that systemd's
watchdog restarts the process, which resumes every queue from
``<state_dir>/mpps/index.db``.
"""

from __future__ import annotations

import logging
import os
import time

from ..config import Config
from ..dimse import AssociationPolicy, Listener, make_ae
from ..lifecycle import Service, Worker
from ..store import Database
from ..store.fsutil import makedirs_durable
from ..uids import VERIFICATION
from . import journal, model, scp
from .notify import NotifyWorker
from .relay import RelayWorker

LOGGER = logging.getLogger("dicombox.mpps")

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


class Housekeeper(Worker):
    """Publishes the service's state for `dicombox status` and the panel."""

    def __init__(self, service: MppsService, interval: float = 5.0):
        super().__init__("mpps-housekeeper")
        self.service = service
        self.interval = interval

    def step(self) -> float:
        with self.service.db.write() as conn:
            journal.set_state(conn, "mpps", self.service.snapshot())
        return self.interval


class MppsService(Service):
    name = "mpps"

    def __init__(self, config: Config, port: int | None = None):
        self.config = config
        self.port = config.mpps.port if port is None else port
        self.db: Database | None = None
        self.listener: Listener | None = None
        self.scp: scp.MppsSCP | None = None
        self.workers: list[Worker] = []
        self.relays: list[RelayWorker] = []
        self.notifier: NotifyWorker | None = None
        self.started_at = time.time()

    def start(self) -> None:
        cfg = self.config
        root = cfg.box.state_dir / "mpps"
        makedirs_durable(root)
        self.db = Database(root / "index.db", journal.MIGRATIONS)
        scp.install()
        names = [d.name for d in cfg.mpps.destinations]
        self._forget_removed_destinations(names)
        self.scp = scp.MppsSCP(self.db, names, cfg.mpps.require_type2,
                               on_accepted=self._wake_relays)
        ae = make_ae(cfg.mpps.ae_title, cfg.network, cfg.mpps.max_associations)
        ae.add_supported_context(VERIFICATION.uid, TRANSFER_SYNTAXES[:2])
        ae.add_supported_context(model.MPPS_SOP_CLASS, TRANSFER_SYNTAXES)
        policy = AssociationPolicy(cfg.mpps.ae_title, cfg.mpps.allowed_calling_aets,
                                   cfg.mpps.allowed_peers)
        self.listener = Listener(ae, cfg.box.listen_address, self.port, policy,
                                 self.scp.handlers())
        self.relays = [RelayWorker(self.db, d, cfg) for d in cfg.mpps.destinations]
        self.workers = [Housekeeper(self), *self.relays]
        if cfg.mpps.notifications.enabled:
            self.notifier = NotifyWorker(self.db, cfg)
            self.workers.append(self.notifier)
        for w in self.workers:
            w.start()
        self.listener.start()
        self.port = self.listener.port

    def _forget_removed_destinations(self, names: list[str]) -> None:
        """Deliveries to a destination no longer configured cannot be sent: they
        are moved to dead-letter, with the reason, rather than waiting forever."""
        marks = ",".join("?" for _ in names) or "''"
        with self.db.write() as conn:
            n = conn.execute(
                "UPDATE deliveries SET state = 'dead', last_error = 'destination no longer "
                f"configured' WHERE state = 'pending' AND destination NOT IN ({marks})",
                names).rowcount
        if n:
            LOGGER.warning("%d queued message(s) for removed destinations moved to "
                           "dead-letter", n)

    def _wake_relays(self, operation: str, uid: str, state: str) -> None:
        for r in self.relays:
            r.wake()
        if self.notifier is not None and state == model.COMPLETED:
            self.notifier.wake()

    def healthy(self) -> bool:
        return all(w.is_alive() for w in self.workers)

    def queue_counts(self) -> dict:
        out = {}
        for row in self.db.query("SELECT destination, state, COUNT(*) AS n FROM deliveries "
                                 "WHERE state != 'done' GROUP BY destination, state"):
            out.setdefault(row["destination"], {})[row["state"]] = row["n"]
        return out

    def snapshot(self) -> dict:
        relays = {}
        queues = self.queue_counts() if self.db else {}
        for r in self.relays:
            relays[r.dest.name] = {"role": r.dest.role, **r.counters,
                                   **queues.get(r.dest.name, {}), "last_error": r.last_error}
        return {
            "pid": os.getpid(),
            "ae_title": self.config.mpps.ae_title,
            "address": self.config.box.listen_address,
            "port": self.port,
            "active_associations": self.listener.active_associations() if self.listener else 0,
            "counters": dict(self.scp.counters) if self.scp else {},
            "destinations": relays,
            "notifications": dict(self.notifier.counters) if self.notifier else {},
            "started_at": self.started_at,
            "updated_at": time.time(),
        }

    def status(self) -> str:
        snap = self.snapshot()
        c = snap["counters"]
        pending = sum(d.get("pending", 0) for d in snap["destinations"].values())
        dead = sum(d.get("dead", 0) for d in snap["destinations"].values())
        return (f"{snap['ae_title']} on {snap['address']}:{snap['port']}: "
                f"{snap['active_associations']} association(s), {c.get('stored', 0)} accepted, "
                f"{c.get('refused', 0)} refused, {pending} to relay, {dead} dead-letter")

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close(self.scp.close_and_wait if self.scp else None)
        for w in reversed(self.workers):
            w.stop()
        if self.db is not None:
            with self.db.write() as conn:
                journal.set_state(conn, "mpps", {**self.snapshot(), "stopped": True})
            self.db.close()
