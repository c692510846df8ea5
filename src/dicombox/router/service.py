"""The router service: Verification and Storage SCP on the box's main AE.

Failure policy: the router must never drop an accepted instance.  Anything
unexpected inside a handler becomes a failure status for that C-STORE (the
modality keeps its copy and retries); a dead worker thread makes the service
unhealthy so that systemd's watchdog restarts the process, which resumes
from the spool and index on disk.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from pathlib import Path

from ..config import Config
from ..dimse import AssociationPolicy, Listener, make_ae, storage_contexts
from ..dimse.storage import StorageSCP, enable_streaming, service_snapshot
from ..lifecycle import Service, Worker
from ..store import InstanceStore
from ..uids import STORAGE_SOP_CLASSES, VERIFICATION

LOGGER = logging.getLogger("dicombox.router")

#: Temporary files older than this belong to associations that died mid-transfer.
STALE_TMP_SECONDS = 3600


#: Parts of the router that plug into its AE, its store transaction and its
#: workers ("module:Class"; each class follows :class:`RouterComponent`).
COMPONENTS: list[str] = [
    "dicombox.commit.scp:Commitment",
    "dicombox.router.forward:Forwarding",
]


class RouterComponent:
    """A part of the router served on its AE (forwarding, storage commitment…).

    Constructed with the :class:`RouterService` once the store is open and
    before the listener starts.  Every method has a harmless default.
    """

    name = "component"
    #: Tables this component keeps in the router's index database.
    migrations: list = []

    def __init__(self, service: RouterService):
        self.service = service

    def contexts(self) -> list:
        """Extra presentation contexts the router's AE supports."""
        return []

    def handlers(self) -> list:
        """Extra pynetdicom event handlers bound to the router's listener."""
        return []

    def on_stored(self, conn, instance_id: int, replaced: bool, info) -> None:
        """Runs inside the transaction that commits a received instance."""

    def workers(self) -> list[Worker]:
        return []

    def snapshot(self) -> dict:
        """State published for `dicombox status` and the panel."""
        return {}

    def stop(self) -> None:
        """Called after the listener and workers stopped, before the store closes."""


def load_components(names=None) -> list[type]:
    classes = []
    for spec in COMPONENTS if names is None else names:
        module, _, cls = spec.partition(":")
        classes.append(getattr(importlib.import_module(module), cls))
    return classes


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

    #: Publish at least this often, so that readers can tell a live service
    #: from one that died (they treat 20 s without an update as down).
    HEARTBEAT = 10.0

    def __init__(self, service: RouterService, interval: float = 1.0):
        super().__init__("router-housekeeper")
        self.service = service
        self.interval = interval
        self._last_sweep = 0.0
        self._last_published: tuple[float, str] = (0.0, "")

    def step(self) -> float:
        svc = self.service
        now = time.time()
        snap = svc.snapshot()
        key = json.dumps({k: v for k, v in snap.items() if k not in ("updated_at", "free_bytes")},
                         sort_keys=True, default=str)
        # Publish on change (the panel shows associations as they open) or as a
        # heartbeat; not every second, to spare the SD card.
        if key != self._last_published[1] or now - self._last_published[0] > self.HEARTBEAT:
            svc.store.set_state("router", json.dumps(snap, default=str))
            self._last_published = (now, key)
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
        self.components: list[RouterComponent] = []
        self.started_at = time.time()

    def start(self) -> None:
        cfg = self.config
        classes = load_components()
        migrations = [m for c in classes for m in c.migrations]
        self.store = InstanceStore(cfg.box.state_dir, "router",
                                   reserve_bytes=cfg.storage.reserve_mb * 1024 * 1024,
                                   duplicates=cfg.storage.duplicates, migrations=migrations)
        recovered = self.store.recover()
        if not recovered["clean"]:
            LOGGER.warning("router: previous run did not stop cleanly; spool checked")
        enable_streaming(self.store.tmp_dir)
        self.components = [c(self) for c in classes]
        self.scp = StorageSCP(self.store, set(accepted_sop_classes(cfg)),
                              on_stored=self._on_stored)
        ae = make_ae(cfg.router.ae_title, cfg.network, cfg.router.max_associations)
        contexts = router_contexts(cfg)
        for comp in self.components:
            contexts += comp.contexts()
        for cx in contexts:
            # add_supported_context keeps the SCU/SCP role selection a
            # component asks for (the supported_contexts setter drops it).
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax,
                                     scu_role=cx.scu_role, scp_role=cx.scp_role)
        policy = AssociationPolicy(cfg.router.ae_title, cfg.router.allowed_calling_aets,
                                   cfg.router.allowed_peers)
        handlers = self.scp.handlers()
        for comp in self.components:
            handlers += comp.handlers()
        self.listener = Listener(ae, cfg.box.listen_address, self.port, policy, handlers)
        self.workers = [Housekeeper(self)]
        for comp in self.components:
            self.workers += comp.workers()
        for w in self.workers:
            w.start()
        self.listener.start()
        self.port = self.listener.port

    def _on_stored(self, conn, instance_id, replaced, info) -> None:
        for comp in self.components:
            comp.on_stored(conn, instance_id, replaced, info)

    def healthy(self) -> bool:
        return all(w.is_alive() for w in self.workers)

    def snapshot(self) -> dict:
        scp = self.scp
        extra = {}
        for comp in self.components:
            extra[comp.name] = comp.snapshot()
        return {
            **extra,
            **service_snapshot(self.config.router.ae_title, self.config.box.listen_address,
                               self.port, self.listener, scp, self.store, self.started_at),
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
            self.listener.close(self.scp.inflight.close_and_wait if self.scp else None)
        for w in reversed(self.workers):
            w.stop()
        for comp in reversed(self.components):
            comp.stop()
        if self.store is not None:
            self.store.set_state("router", json.dumps({**self.snapshot(), "stopped": True}))
            self.store.close(clean=True)


def spool_root(config: Config) -> Path:
    return config.box.state_dir / "router"
