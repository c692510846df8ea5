"""Sends the N-EVENT-REPORT of every resolved request, until the requester takes it.

Where the report goes (PS3.4 J.3.3):

1. on the request's own association, if the requester keeps it open and
   ``same_association`` allows it (the box is the acceptor there, and the
   report follows the N-ACTION response);
2. otherwise on a new association to the requester's address from
   ``[[remote_aes]]`` (by calling AE title), the box proposing the Storage
   Commitment Push Model with SCU/SCP role selection in the SCP role.

A report that cannot be delivered is retried with exponential backoff and
jitter up to ``report_retry_max``, and abandoned after ``report_give_up``.
The queue is the ``commit_requests`` table: a restart resumes it, and a
report may arrive twice (the requester recognises the Transaction UID).
Each report is sent from its own thread, at most ``report_workers`` at a
time, so one unreachable modality never delays the reports of the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.presentation import build_context, build_role

from ..config.commit import remote_ae
from ..dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, nodelay
from ..lifecycle import Worker
from ..store import Database
from ..uids import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from .model import move

LOGGER = logging.getLogger("dicombox.commit")

#: Event Type IDs of the Storage Commitment N-EVENT-REPORT (PS3.4 J.3.3).
EVENT_SUCCESS = 1
EVENT_FAILURES = 2


def build_report(transaction_uid: str, items) -> tuple[int, Dataset]:
    """Event type and Event Information of a request whose items are resolved.

    ``items`` are rows with ``sop_class_uid``, ``sop_instance_uid``,
    ``state`` and ``failure_reason``; a pending item is never reported as
    committed.
    """
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ok, failed = [], []
    for row in items:
        item = Dataset()
        item.ReferencedSOPClassUID = row["sop_class_uid"]
        item.ReferencedSOPInstanceUID = row["sop_instance_uid"]
        if row["state"] == "committed":
            ok.append(item)
        else:
            item.FailureReason = row["failure_reason"] or 0x0110
            failed.append(item)
    if ok:
        ds.ReferencedSOPSequence = ok
    if failed:
        ds.FailedSOPSequence = failed
    return (EVENT_FAILURES if failed else EVENT_SUCCESS), ds


def requestor_ae(ae_title: str, network, timeout: float) -> AE:
    """The AE the box uses to open associations for storage commitment."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = network.acse_timeout
    ae.network_timeout = network.network_timeout
    ae.dimse_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = network.max_pdu
    return ae


class OpenAssociations:
    """The requests' own associations, while a report may still go on them.

    A request is registered by the N-ACTION handler; it becomes usable only
    once the N-ACTION response has been sent (``EVT_DIMSE_SENT``), so the
    report never overtakes the response, and is forgotten when the
    connection closes.  Memory only: after a restart every association is
    gone anyway.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._answering: dict[object, list[int]] = {}
        self._open: dict[int, object] = {}

    def expect(self, assoc, request_id: int) -> None:
        with self._lock:
            self._answering.setdefault(assoc, []).append(request_id)

    def on_sent(self, event) -> None:
        if not isinstance(event.message, N_ACTION_RSP):
            return
        with self._lock:
            for request_id in self._answering.pop(event.assoc, []):
                self._open[request_id] = event.assoc

    def on_closed(self, event) -> None:
        with self._lock:
            self._answering.pop(event.assoc, None)
            for request_id in [r for r, a in self._open.items() if a is event.assoc]:
                del self._open[request_id]

    def answering(self, request_id: int) -> bool:
        """The N-ACTION of this request is still being answered."""
        with self._lock:
            return any(request_id in ids for ids in self._answering.values())

    def get(self, request_id: int):
        """The request's association if it is open and not being released."""
        with self._lock:
            assoc = self._open.get(request_id)
        if assoc is None or not assoc.is_established:
            return None
        if _releasing(assoc):
            return None
        return assoc

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._open.pop(request_id, None)

    def handlers(self) -> list:
        return [(evt.EVT_DIMSE_SENT, self.on_sent), (evt.EVT_CONN_CLOSE, self.on_closed)]


class ReportSender(Worker):
    """Delivers due reports; see the module docstring."""

    def __init__(self, db: Database, config, open_associations: OpenAssociations):
        super().__init__("commit-reports")
        self.db = db
        self.config = config
        self.section = config.commitment
        self.open = open_associations
        self.ae = requestor_ae(config.router.ae_title, config.network,
                               self.section.report_timeout)
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def step(self) -> float:
        now = time.time()
        rows = self.db.query(
            "SELECT id, next_report_at FROM commit_requests WHERE state = 'ready' "
            "ORDER BY next_report_at LIMIT 200")
        wait = 5.0
        for row in rows:
            if self.stopping.is_set():
                break
            due = row["next_report_at"] or 0
            with self._lock:
                if row["id"] in self._inflight:
                    continue
                if due > now:
                    wait = min(wait, due - now)
                    continue
                if len(self._inflight) >= self.section.report_workers:
                    wait = min(wait, 0.05)
                    break
                self._inflight.add(row["id"])
            threading.Thread(target=self._send, args=(row["id"],), daemon=True,
                             name=f"commit-report-{row['id']}").start()
        return max(wait, 0.01)

    def _send(self, request_id: int) -> None:
        try:
            self.send(request_id)
        except Exception:  # noqa: BLE001 - last resort: keep the report queued
            if self.stopping.is_set():
                # The router closed the index under a report in flight; the
                # request is still `ready` on disk and is sent after the restart.
                LOGGER.info("report of commitment request %d interrupted by the stop",
                            request_id)
                return
            LOGGER.exception("report of commitment request %d failed unexpectedly", request_id)
            self._failed(request_id, "internal error; see the log")
        finally:
            with self._lock:
                self._inflight.discard(request_id)
                self._idle.notify_all()
            self.wake()

    def stop(self, timeout: float | None = 10) -> None:
        """Stop taking reports and give those in flight up to ``timeout`` seconds."""
        super().stop(timeout)
        with self._lock:
            self._idle.wait_for(lambda: not self._inflight, timeout)

    def send(self, request_id: int) -> None:
        req = self.db.query_one("SELECT * FROM commit_requests WHERE id = ?", (request_id,))
        if req is None or req["state"] != "ready":
            return
        if self.open.answering(request_id):
            # The N-ACTION response is still on its way: the report must follow it.
            with self.db.write() as conn:
                move(conn, request_id, "ready", "ready", next_report_at=time.time() + 0.02)
            return
        items = self.db.query("SELECT sop_class_uid, sop_instance_uid, state, failure_reason "
                              "FROM commit_items WHERE request_id = ? ORDER BY seq",
                              (request_id,))
        event_type, ds = build_report(req["transaction_uid"], items)
        remote = remote_ae(self.config, req["calling_aet"])
        errors = []
        via = None
        if self.section.same_association_for(remote):
            assoc = self.open.get(request_id)
            if assoc is not None:
                error = self._on_association(assoc, ds, event_type)
                if error is None:
                    via = "same association"
                else:
                    errors.append(f"same association: {error}")
        if via is None:
            if remote is None:
                errors.append(f"{req['calling_aet'].strip()!r} is not in [[remote_aes]]: no "
                              "address to report to on a new association")
            else:
                error = self._on_new_association(remote, ds, event_type)
                if error is None:
                    via = "new association"
                else:
                    errors.append(f"{remote.ae_title}@{remote.host}:{remote.port}: {error}")
        if via is None:
            self._failed(request_id, "; ".join(errors))
            return
        self.open.forget(request_id)
        with self.db.write() as conn:
            move(conn, request_id, "ready", "reported", reported_at=time.time(),
                 reported_via=via, report_attempts=req["report_attempts"] + 1, last_error="")
        LOGGER.info("commitment report %s (event type %d) sent to %s on the %s",
                    req["transaction_uid"], event_type, req["calling_aet"].strip(), via)

    def _failed(self, request_id: int, error: str) -> None:
        now = time.time()
        with self.db.write() as conn:
            req = conn.execute("SELECT state, report_attempts, resolved_at, received_at "
                               "FROM commit_requests WHERE id = ?", (request_id,)).fetchone()
            if req is None or req["state"] != "ready":
                return
            attempts = req["report_attempts"] + 1
            since = req["resolved_at"] or req["received_at"]
            if now - since > self.section.report_give_up:
                move(conn, request_id, "ready", "abandoned", report_attempts=attempts,
                     last_error=error[:500])
                LOGGER.error("commitment report of request %d abandoned after %d attempts: %s",
                             request_id, attempts, error)
                return
            delay = min(self.section.report_retry * 2 ** (attempts - 1),
                        self.section.report_retry_max)
            delay *= random.uniform(0.5, 1.0)
            move(conn, request_id, "ready", "ready", report_attempts=attempts,
                 next_report_at=now + delay, last_error=error[:500])
        LOGGER.warning("commitment report of request %d not delivered (attempt %d, next in "
                       "%.0f s): %s", request_id, attempts, delay, error)

    def _on_association(self, assoc, ds: Dataset, event_type: int) -> str | None:
        """Send on the requester's open association; an error text or None."""
        return send_on_open_association(assoc, ds, event_type, self.section.report_timeout)

    def _on_new_association(self, remote, ds: Dataset, event_type: int) -> str | None:
        context = build_context(STORAGE_COMMITMENT_PUSH.uid,
                                [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ext_neg = ([build_role(STORAGE_COMMITMENT_PUSH.uid, scp_role=True)]
                   if remote.role_selection else [])
        assoc = self.ae.associate(remote.host, remote.port, contexts=[context],
                                  ae_title=remote.ae_title, ext_neg=ext_neg,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        if not assoc.is_established:
            return _association_error(assoc)
        try:
            status, _ = assoc.send_n_event_report(ds, event_type, STORAGE_COMMITMENT_PUSH.uid,
                                                  STORAGE_COMMITMENT_INSTANCE)
            return _status_error(status)
        except (RuntimeError, ValueError) as exc:
            return str(exc)
        finally:
            if assoc.is_established:
                assoc.release()


def send_on_open_association(assoc, ds: Dataset, event_type: int,
                              timeout: float) -> str | None:
    """Send an N-EVENT-REPORT on an association the requester opened.

    Like pynetdicom's ``send_n_event_report`` this pauses the association's
    reactor while it waits for the answer, but it also gives up as soon as
    the requester asks to release: a modality that releases right after the
    N-ACTION response ignores a report that crosses its release request, and
    waiting for an answer that never comes would delay the report (and hold
    the release) until the timeout.  The reactor then answers the release
    and the report goes on a new association.  Returns an error text or None.
    """
    try:
        context = assoc._get_valid_context(STORAGE_COMMITMENT_PUSH.uid, "", None)
    except ValueError as exc:
        return str(exc)
    ts = context.transfer_syntax[0]
    req = N_EVENT_REPORT()
    req.MessageID = 1
    req.AffectedSOPClassUID = STORAGE_COMMITMENT_PUSH.uid
    req.AffectedSOPInstanceUID = STORAGE_COMMITMENT_INSTANCE
    req.EventTypeID = event_type
    req.EventInformation = BytesIO(encode(ds, ts.is_implicit_VR, ts.is_little_endian,
                                          ts.is_deflated))
    # Requests the peer sends meanwhile (it may have one of its own outstanding)
    # are put back on the queue for the reactor once the answer is in.
    others = []
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            if not assoc.is_established:
                return "the requester closed the association"
            time.sleep(0.0005)
        if not assoc.is_established or _releasing(assoc):
            return "the requester released the association"
        assoc.dimse.send_msg(req, context.context_id)
        deadline = time.monotonic() + timeout
        while True:
            cx_id, rsp = assoc.dimse.get_msg(block=False)
            if isinstance(rsp, N_EVENT_REPORT) and rsp.is_valid_response:
                break
            if rsp is not None:
                others.append((cx_id, rsp))
                continue
            if not assoc.is_established:
                return "the association closed before the answer"
            if _releasing(assoc):
                return "the requester released the association without answering"
            if time.monotonic() > deadline:
                return f"no answer within {timeout:g} s"
            time.sleep(0.002)
    finally:
        for item in others:
            assoc.dimse.msg_queue.put(item)
        assoc._reactor_checkpoint.set()
    if rsp.Status != 0x0000:
        return f"N-EVENT-REPORT answered with status 0x{rsp.Status:04X}"
    return None


def _releasing(assoc) -> bool:
    return isinstance(assoc.dul.peek_next_pdu(), A_RELEASE)


def _status_error(status: Dataset, what: str = "N-EVENT-REPORT") -> str | None:
    if "Status" not in status:
        return f"no answer to the {what} (timeout or abort)"
    if status.Status != 0x0000:
        comment = status.get("ErrorComment", "")
        return f"{what} answered with status 0x{status.Status:04X} {comment}".strip()
    return None


def _association_error(assoc) -> str:
    if assoc.is_rejected:
        return "association rejected"
    if assoc.is_aborted:
        return "association aborted"
    return "cannot connect or associate"
