"""The router service: Verification and Storage SCP on the box's main AE.

Failure policy: the router must never drop an accepted instance.  Anything
unexpected inside a handler becomes a failure status for that C-STORE (the
modality keeps its copy and retries); a dead worker thread makes the service
unhealthy so that systemd's watchdog restarts the process, which resumes
from the spool and index on disk.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..config import Config
from ..dimse import AssociationPolicy, Listener, make_ae, storage_contexts
from ..dimse.storage import StorageSCP, enable_streaming
from ..lifecycle import Service, Worker
from ..store import InstanceStore
from ..uids import STORAGE_SOP_CLASSES, VERIFICATION

LOGGER = logging.getLogger("dicombox.router")

#: Temporary files older than this belong to associations that died mid-transfer.
STALE_TMP_SECONDS = 3600


def accepted_sop_classes(config: Config) -> list[str]:
    return [u.uid for u in STORAGE_SOP_CLASSES] + list(config.storage.private_sop_classes)


def router_contexts(config: Config):
    """The presentation contexts the router accepts, as negotiated and published."""
    ts = list(config.storage.transfer_syntax_uids())
    contexts = storage_contexts([VERIFICATION.uid], ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    contexts += storage_contexts(accepted_sop_classes(config), ts)
    return contexts


class Housekeeper(Worker):
    """Publishes the router's state for `dicombox status` and the panel, and
    removes temporary files left by associations that died mid-transfer."""

    def __init__(self, service: RouterService, interval: float = 5.0):
        super().__init__("router-housekeeper")
        self.service = service
        self.interval = interval
        self._last_sweep = 0.0

    def step(self) -> float:
        svc = self.service
        svc.store.set_state("router", json.dumps(svc.snapshot()))
        now = time.time()
        if now - self._last_sweep > 300:
            self._last_sweep = now
            for entry in os.scandir(svc.store.tmp_dir):
                try:
                    if now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                        os.unlink(entry.path)
                        LOGGER.info("removed stale temporary file %s", entry.name)
                except FileNotFoundError:
                    pass
        return self.interval


class RouterService(Service):
    name = "router"

    def __init__(self, config: Config, port: int | None = None):
        self.config = config
        self.port = config.router.port if port is None else port
        self.store: InstanceStore | None = None
        self.listener: Listener | None = None
        self.scp: StorageSCP | None = None
        self.workers: list[Worker] = []
        self.started_at = time.time()

    def start(self) -> None:
        cfg = self.config
        self.store = InstanceStore(cfg.box.state_dir, "router",
                                   reserve_bytes=cfg.storage.reserve_mb * 1024 * 1024,
                                   duplicates=cfg.storage.duplicates)
        recovered = self.store.recover()
        if not recovered["clean"]:
            LOGGER.warning("router: previous run did not stop cleanly; spool checked")
        enable_streaming(self.store.tmp_dir)
        self.scp = StorageSCP(self.store, set(accepted_sop_classes(cfg)))
        ae = make_ae(cfg.router.ae_title, cfg.network, cfg.router.max_associations)
        ae.supported_contexts = router_contexts(cfg)
        policy = AssociationPolicy(cfg.router.ae_title, cfg.router.allowed_calling_aets,
                                   cfg.router.allowed_peers)
        self.listener = Listener(ae, cfg.box.listen_address, self.port, policy,
                                 self.scp.handlers())
        self.workers = [Housekeeper(self)]
        for w in self.workers:
            w.start()
        self.listener.start()
        self.port = self.listener.port

    def healthy(self) -> bool:
        return all(w.is_alive() for w in self.workers)

    def snapshot(self) -> dict:
        scp = self.scp
        return {
            "pid": os.getpid(),
            "ae_title": self.config.router.ae_title,
            "address": self.config.box.listen_address,
            "port": self.port,
            "active_associations": self.listener.active_associations() if self.listener else 0,
            "counters": dict(scp.counters) if scp else {},
            "free_bytes": self.store.free_bytes() if self.store else 0,
            "reserve_bytes": self.store.reserve_bytes if self.store else 0,
            "started_at": self.started_at,
            "updated_at": time.time(),
        }

    def status(self) -> str:
        snap = self.snapshot()
        c = snap["counters"]
        return (f"{snap['ae_title']} on {snap['address']}:{snap['port']}: "
                f"{snap['active_associations']} association(s), "
                f"{c.get('stored', 0)} stored, {c.get('failed', 0)} failed, "
                f"{c.get('refused', 0)} refused")

    def stop(self) -> None:
        if self.listener is not None:
            if not self.listener.drain(timeout=10):
                LOGGER.warning("associations still open after 10 s; finishing the C-STORE "
                               "in flight and aborting them")
            if self.scp is not None:
                self.scp.inflight.close_and_wait(30)
            if self.listener.server is not None:
                for assoc in list(self.listener.server.active_associations):
                    assoc.abort()
            self.listener.stop()
        for w in reversed(self.workers):
            w.stop()
        if self.store is not None:
            self.store.set_state("router", json.dumps({**self.snapshot(), "stopped": True}))
            self.store.close(clean=True)


def spool_root(config: Config) -> Path:
    return config.box.state_dir / "router"
