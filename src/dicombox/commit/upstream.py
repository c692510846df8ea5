"""Upstream mode: the box asks its destinations to commit what it delivered.

For every destination listed in ``[[commitment.upstream]]`` one worker
collects the forwarding queue rows that were delivered there and are not
yet committed, journals a transaction (``commit_upstream`` and its items)
and sends it as an N-ACTION, the box being the Storage Commitment SCU.  The
destination's N-EVENT-REPORT comes back on a new association to the
router's AE (which accepts the SCP role for the requestor through SCU/SCP
role selection) or, with ``keep_open``, on the request's own association;
:meth:`Upstream.handle_report` then sets ``committed_at`` on the queue rows
it names.  An unanswered transaction is asked again after
``report_timeout``, at most ``max_requests`` times per delivery; an instance
the destination reports as failed is not asked again until it is delivered
again.  Downstream requests in upstream mode succeed only on
``committed_at``.
"""

from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_context

from ..dimse import nodelay
from ..dimse import status as st
from ..lifecycle import Worker
from ..store import Database
from ..uids import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from .model import has_forward_queue, move_upstream
from .report import _association_error, _status_error, requestor_ae

LOGGER = logging.getLogger("dicombox.commit.upstream")

#: N-EVENT-REPORT statuses (PS3.7 10.1.1.1.8) for reports the box cannot use.
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_ARGUMENT_VALUE = 0x0115

_CANDIDATES = """
    SELECT f.id AS queue_id, i.sop_class_uid,
           CASE WHEN f.sent_sop_instance_uid != '' THEN f.sent_sop_instance_uid
                ELSE f.sop_instance_uid END AS sop_instance_uid
    FROM forward_queue f JOIN instances i ON i.id = f.instance_id
    WHERE f.destination = :destination AND f.state = 'delivered' AND f.committed_at IS NULL
      AND NOT EXISTS (
        SELECT 1 FROM commit_upstream_items ui JOIN commit_upstream u ON u.id = ui.upstream_id
        WHERE ui.queue_id = f.id AND u.created_at >= COALESCE(f.delivered_at, 0)
          AND (ui.state = 'failed'
               OR (ui.state = 'pending' AND u.state IN ('new', 'requested')
                   AND u.created_at > :expired)))
      AND (SELECT COUNT(*) FROM commit_upstream_items ui
           JOIN commit_upstream u ON u.id = ui.upstream_id
           WHERE ui.queue_id = f.id AND u.state != 'refused'
             AND u.created_at >= COALESCE(f.delivered_at, 0)) < :max_requests
    ORDER BY f.delivered_at, f.id LIMIT :batch
"""


class Upstream:
    """The SCU side of upstream mode: requesters and the report handler."""

    def __init__(self, db: Database, config, on_committed):
        self.db = db
        self.config = config
        self.on_committed = on_committed
        self._answered: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def recover(self) -> int:
        """Count requests a restart interrupted (journaled, N-ACTION unanswered) as
        refused, so that their instances are asked again now rather than after
        ``report_timeout``; a late report for them is still accepted."""
        with self.db.write() as conn:
            return conn.execute("UPDATE commit_upstream SET state = 'refused', last_error = "
                                "'interrupted by a restart' WHERE state = 'new'").rowcount

    def workers(self) -> list[Worker]:
        destinations = {d.name: d for d in self.config.destinations}
        return [Requester(self, up, destinations[up.destination])
                for up in self.config.commitment.upstream]

    # -- the destination's report ------------------------------------------------

    def handle_report(self, event):
        """EVT_N_EVENT_REPORT: a destination reports on a transaction of the box."""
        req = event.request
        if req.AffectedSOPClassUID != STORAGE_COMMITMENT_PUSH.uid:
            return _status(st.NO_SUCH_SOP_CLASS, "only Storage Commitment reports"), None
        if req.EventTypeID not in (1, 2):
            return _status(NO_SUCH_EVENT_TYPE, f"no such event type {req.EventTypeID}"), None
        ds = event.event_information
        transaction_uid = str(ds.get("TransactionUID", "") or "")
        now = time.time()
        with self.db.write() as conn:
            txn = conn.execute("SELECT id, destination, state FROM commit_upstream "
                               "WHERE transaction_uid = ?", (transaction_uid,)).fetchone()
            if txn is None:
                LOGGER.warning("report from %s for unknown transaction %r",
                               event.assoc.requestor.ae_title, transaction_uid)
                return _status(INVALID_ARGUMENT_VALUE, "unknown Transaction UID"), None
            if txn["state"] == "answered":
                return st.SUCCESS, None
            ok = [str(i.ReferencedSOPInstanceUID)
                  for i in ds.get("ReferencedSOPSequence", []) or []]
            failed = [(str(i.ReferencedSOPInstanceUID), int(i.get("FailureReason", 0x0110)))
                      for i in ds.get("FailedSOPSequence", []) or []]
            committed = 0
            for uid in ok:
                rows = conn.execute(
                    "UPDATE commit_upstream_items SET state = 'committed' "
                    "WHERE upstream_id = ? AND sop_instance_uid = ? RETURNING queue_id",
                    (txn["id"], uid)).fetchall()
                for row in rows:
                    committed += conn.execute(
                        "UPDATE forward_queue SET committed_at = ? WHERE id = ? "
                        "AND committed_at IS NULL", (now, row["queue_id"])).rowcount
            for uid, reason in failed:
                conn.execute("UPDATE commit_upstream_items SET state = 'failed', "
                             "failure_reason = ? WHERE upstream_id = ? AND sop_instance_uid = ?",
                             (reason, txn["id"], uid))
            # An item the report does not name was not committed either.
            conn.execute("UPDATE commit_upstream_items SET state = 'failed' "
                         "WHERE upstream_id = ? AND state = 'pending'", (txn["id"],))
            move_upstream(conn, txn["id"], txn["state"], "answered", answered_at=now)
        LOGGER.info("%s committed %d of the instances of transaction %s (%d failed)",
                    txn["destination"], len(ok), transaction_uid, len(failed))
        with self._lock:
            done = self._answered.get(transaction_uid)
        if done is not None:
            done.set()
        self.on_committed()
        return st.SUCCESS, None

    def expect(self, transaction_uid: str) -> threading.Event:
        with self._lock:
            return self._answered.setdefault(transaction_uid, threading.Event())

    def unexpect(self, transaction_uid: str) -> None:
        with self._lock:
            self._answered.pop(transaction_uid, None)


class Requester(Worker):
    """Asks one destination to commit what was delivered to it."""

    def __init__(self, upstream: Upstream, options, destination):
        super().__init__(f"commit-upstream-{destination.name}")
        self.upstream = upstream
        self.db = upstream.db
        self.options = options
        self.destination = destination
        config = upstream.config
        self.section = config.commitment
        self.ae = requestor_ae(config.router.ae_title, config.network,
                               self.section.report_timeout)
        self._failures = 0

    def step(self) -> float:
        idle = max(1.0, self.section.check_interval)
        if not has_forward_queue(self.db.read_conn()):
            return 5.0
        now = time.time()
        rows = self.db.query(_CANDIDATES, {
            "destination": self.destination.name, "batch": self.options.batch,
            "max_requests": self.options.max_requests,
            "expired": now - self.options.report_timeout})
        if not rows:
            return idle
        transaction_uid = generate_uid()
        with self.db.write() as conn:
            upstream_id = conn.execute(
                "INSERT INTO commit_upstream (transaction_uid, destination, state, created_at) "
                "VALUES (?, ?, 'new', ?)", (transaction_uid, self.destination.name, now)
            ).lastrowid
            conn.executemany(
                "INSERT INTO commit_upstream_items (upstream_id, queue_id, sop_class_uid, "
                "sop_instance_uid, state) VALUES (?, ?, ?, ?, 'pending')",
                [(upstream_id, r["queue_id"], r["sop_class_uid"], r["sop_instance_uid"])
                 for r in rows])
        error = self.request(transaction_uid, rows)
        with self.db.write() as conn:
            if error is None:
                move_upstream(conn, upstream_id, "new", "requested", requested_at=time.time())
            else:
                move_upstream(conn, upstream_id, "new", "refused", last_error=error[:500])
        if error is not None:
            self._failures += 1
            delay = min(self.section.report_retry * 2 ** (self._failures - 1),
                        self.section.report_retry_max)
            LOGGER.warning("storage commitment request to %s failed (next in %.0f s): %s",
                           self.destination.name, delay, error)
            return delay
        self._failures = 0
        LOGGER.info("asked %s to commit %d instance(s) (transaction %s)",
                    self.destination.name, len(rows), transaction_uid)
        return 0 if len(rows) == self.options.batch else idle

    def request(self, transaction_uid: str, rows) -> str | None:
        """Send the N-ACTION; an error text, or None once the destination accepted it."""
        d = self.destination
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        refs = []
        for r in rows:
            item = Dataset()
            item.ReferencedSOPClassUID = r["sop_class_uid"]
            item.ReferencedSOPInstanceUID = r["sop_instance_uid"]
            refs.append(item)
        ds.ReferencedSOPSequence = refs
        context = build_context(STORAGE_COMMITMENT_PUSH.uid,
                                [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        handlers = [(evt.EVT_CONN_OPEN, nodelay)]
        answered = None
        if self.options.keep_open > 0:
            handlers.append((evt.EVT_N_EVENT_REPORT, self.upstream.handle_report))
            answered = self.upstream.expect(transaction_uid)
        try:
            assoc = self.ae.associate(d.host, d.port, contexts=[context], ae_title=d.ae_title,
                                      evt_handlers=handlers)
            if not assoc.is_established:
                return _association_error(assoc)
            try:
                status, _ = assoc.send_n_action(ds, 1, STORAGE_COMMITMENT_PUSH.uid,
                                                STORAGE_COMMITMENT_INSTANCE)
                error = _status_error(status, "N-ACTION")
                if error is None and answered is not None:
                    answered.wait(self.options.keep_open)
                return error
            except (RuntimeError, ValueError) as exc:
                return str(exc)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            if answered is not None:
                self.upstream.unexpect(transaction_uid)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds
