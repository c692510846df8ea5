"""The Storage SCP shared by the router and the media service.

Received datasets are streamed by pynetdicom into the store's ``tmp/``
directory (``STORE_RECV_CHUNKED_DATASET``), so memory stays flat whatever
the size of the instance; the handler parses the header only, then hands the
file to :meth:`InstanceStore.ingest`, which renames it into the spool and
commits its row before the success status is returned.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom import _config

from ..store import DatasetError, DuplicateKept, InstanceInfo, InstanceStore, OutOfSpace
from ..store.instances import read_header
from . import receive, status

LOGGER = logging.getLogger("dicombox.storage")


def enable_streaming(tmp_dir: Path) -> None:
    """Stream every received C-STORE dataset to a file in ``tmp_dir``.

    Both settings are process-wide; each service runs in its own process and
    owns one store, so this is set once at start-up.  The files are written
    by :class:`~dicombox.dimse.receive.SpoolWriter` (hashing and keeping the
    header in memory as they arrive) where the pynetdicom version allows it.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(tmp_dir)
    receive.install(tmp_dir)


class InFlight:
    """Counts handlers at work and lets a stopping service wait for them."""

    def __init__(self):
        self._count = 0
        self._cond = threading.Condition()
        self.closed = False

    def __enter__(self):
        with self._cond:
            while self.closed:
                self._cond.wait()
            self._count += 1
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def close_and_wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            self.closed = True
            while self._count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def count(self) -> int:
        return self._count


def register_storage_classes(uids) -> None:
    """Make pynetdicom serve C-STORE for SOP classes it does not know
    (configured private classes, and retired ones it dropped)."""
    from pynetdicom import sop_class
    from pynetdicom.service_class import StorageServiceClass

    for uid in uids:
        if sop_class.uid_to_service_class(uid) is not StorageServiceClass:
            keyword = "DicomboxStorage_" + uid.replace(".", "_")
            if not hasattr(sop_class, keyword):
                sop_class.register_uid(uid, keyword, StorageServiceClass)


class StorageSCP:
    """EVT_C_STORE and EVT_C_ECHO handlers writing into an :class:`InstanceStore`.

    ``on_stored(conn, instance_id, replaced, info)`` runs inside the
    transaction that commits the instance row (the router queues routing
    work there); ``after_stored(info)`` runs after the commit.
    """

    def __init__(self, store: InstanceStore, accepted_sop_classes: set[str],
                 on_stored: Callable | None = None,
                 after_stored: Callable[[InstanceInfo], None] | None = None):
        self.store = store
        self.accepted = accepted_sop_classes
        register_storage_classes(sorted(accepted_sop_classes))
        self.on_stored = on_stored
        self.after_stored = after_stored
        self.inflight = InFlight()
        self.counters = {"stored": 0, "failed": 0, "refused": 0, "bytes": 0}
        self._lock = threading.Lock()

    def handlers(self) -> list:
        from pynetdicom import evt
        return [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo)]

    def handle_echo(self, event) -> int:
        return status.SUCCESS

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def handle_store(self, event):
        with self.inflight:
            return self._store(event)

    def _store(self, event):
        req = event.request
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        called = assoc.acceptor.ae_title
        address = assoc.requestor.address
        sop_class = str(req.AffectedSOPClassUID)
        sop_instance = str(req.AffectedSOPInstanceUID)
        try:
            path = Path(event.dataset_path)
        except AttributeError:
            path = None
        try:
            if path is None:
                # Streaming is off (never in the services): write the bytes out.
                fd, name = tempfile.mkstemp(dir=self.store.tmp_dir, suffix=".dcm")
                with os.fdopen(fd, "wb") as f:
                    f.write(event.encoded_dataset())
                path = Path(name)
            return self._ingest(path, sop_class, sop_instance, calling, called, address)
        except Exception:
            LOGGER.exception("C-STORE of %s from %s@%s failed", sop_instance, calling, address)
            self._count("failed")
            _discard(path)
            return _status(status.HANDLER_FAILURE, "internal error while storing; see the log")

    def _ingest(self, path: Path, sop_class: str, sop_instance: str, calling: str,
                called: str, address: str):
        try:
            self.store.check_space()
        except OutOfSpace as exc:
            LOGGER.error("refusing %s from %s: out of space (%s)", sop_instance, calling, exc)
            self._count("refused")
            _discard(path)
            return _status(status.OUT_OF_RESOURCES, f"out of storage space: {exc}")
        writer = receive.writer_for(path)
        if writer is not None:
            writer.close()
            if writer.error is not None:
                LOGGER.error("cannot write %s from %s: %s", sop_instance, calling, writer.error)
                self._count("failed")
                _discard(path)
                return _status(status.OUT_OF_RESOURCES,
                               f"storage error: {writer.error.strerror or writer.error}")
        head = writer.head if writer is not None else None
        whole = head if writer is not None and writer.complete_in_head else None
        try:
            if writer is not None:
                values = read_header(path, head, whole is not None)
            else:
                values = read_header(path)
        except DatasetError as exc:
            LOGGER.error("C-STORE of %s from %s: %s", sop_instance, calling, exc)
            self._count("failed")
            _discard(path)
            return _status(status.CANNOT_DECODE, str(exc)[:64])
        if values["sop_class_uid"] != sop_class or values["sop_instance_uid"] != sop_instance:
            self._count("failed")
            _discard(path)
            return _status(status.DATASET_MISMATCH,
                           "SOP Class/Instance UID differ from the C-STORE request")
        missing = [k for k in ("study_instance_uid", "series_instance_uid") if not values[k]]
        if missing:
            self._count("failed")
            _discard(path)
            return _status(status.CANNOT_UNDERSTAND,
                           f"missing {', '.join(missing).replace('_', ' ')}")
        if sop_class not in self.accepted:
            self._count("failed")
            _discard(path)
            return _status(status.DATASET_MISMATCH, "SOP class not accepted")
        info = InstanceInfo(calling_aet=calling, called_aet=called, peer_address=address,
                            **values)
        checksum = None
        if writer is not None:
            # Hashed while it was received: the store need not read it again.
            info.size, checksum = writer.size, writer.hexdigest
        hook = None
        if self.on_stored is not None:
            def hook(conn, instance_id, replaced):
                self.on_stored(conn, instance_id, replaced, info)
        try:
            # A small instance is whole in memory: its bytes go into the index's
            # commit and the file is made durable in the background.
            self.store.ingest(path, info, hook, checksum, whole)
        except DuplicateKept:
            LOGGER.info("%s already stored; kept the first copy", sop_instance)
            self._count("stored")
            return status.SUCCESS
        except OSError as exc:
            LOGGER.error("cannot store %s: %s", sop_instance, exc)
            self._count("failed")
            _discard(path)
            return _status(status.OUT_OF_RESOURCES, f"storage error: {exc.strerror or exc}")
        self._count("stored")
        self._count("bytes", info.size)
        if self.after_stored is not None:
            try:
                self.after_stored(info)
            except Exception:  # noqa: BLE001 - the instance is stored; log only
                LOGGER.exception("post-store hook failed for %s", sop_instance)
        return status.SUCCESS


def _status(code: int, comment: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _discard(path: Path | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def service_snapshot(ae_title: str, address: str, port: int, listener, scp, store,
                     started_at: float) -> dict:
    """The state a storage service publishes in its index's ``service_state`` row
    (read by ``dicombox status`` and the front panel): one shape for every service."""
    import os

    return {
        "pid": os.getpid(),
        "ae_title": ae_title,
        "address": address,
        "port": port,
        "active_associations": listener.active_associations() if listener else 0,
        "counters": dict(scp.counters) if scp else {},
        "free_bytes": store.free_bytes() if store else 0,
        "reserve_bytes": store.reserve_bytes if store else 0,
        "started_at": started_at,
        "updated_at": time.time(),
    }
