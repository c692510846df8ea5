"""Relay of journaled N-CREATE/N-SET messages to one destination.

One :class:`RelayWorker` per destination, so a destination that is down never
delays the other.  Each pass takes the due head of every procedure step's
queue (:data:`journal.DUE_SQL`), sends them on one association and marks
each outcome in the table before the next message of that step becomes due.
Delivery is at-least-once: after a crash the message in flight is sent
again, so a destination's "duplicate" answer to a repeated N-CREATE, or
"may no longer be updated" to a repeated final N-SET, counts as delivered.

Outcome of one attempt, by what happened (:func:`classify`):

=========================================  ==========================
association refused transiently, no         retry with backoff
connection, abort, timeout, A7xx, 0213
association refused permanently, other      dead-letter with the reason
failure status
success, warning, duplicate on a resend     delivered
=========================================  ==========================
"""

from __future__ import annotations

import logging
import random
import time

from pydicom.dataset import Dataset

from ..dimse import NODELAY_HANDLERS, make_ae, refusal_text
from ..dimse import status as st
from ..lifecycle import Worker
from . import journal, model

LOGGER = logging.getLogger("dicombox.mpps.relay")

DELIVERED, RETRY, DEAD = "delivered", "retry", "dead"
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def backoff(attempts: int, initial: float, ceiling: float, rng=random) -> float:
    """Exponential backoff with ±20 % jitter, capped at ``ceiling``."""
    delay = min(ceiling, initial * (2 ** max(0, attempts - 1)))
    return delay * rng.uniform(0.8, 1.2)


def is_success_or_warning(status: int) -> bool:
    """PS3.7 C: 0000 is success; 0001, Bxxx, 0107 and 0116 are warnings."""
    return status in (0x0000, 0x0001, 0x0107, 0x0116) or (status & 0xF000) == 0xB000


def classify(operation: str, status: int | None, error_id: int | None, resend: bool) -> str:
    """What a response status means for the queue (see the module docstring)."""
    if status is None:
        return RETRY
    if is_success_or_warning(status):
        return DELIVERED
    if resend and operation == model.N_CREATE and status == st.DUPLICATE_SOP_INSTANCE:
        return DELIVERED
    if resend and operation == model.N_SET and status == st.PROCESSING_FAILURE \
            and error_id == model.ERROR_ID_NO_LONGER_UPDATABLE:
        return DELIVERED
    if (status & 0xFF00) == 0xA700 or status == st.RESOURCE_LIMITATION:
        return RETRY
    return DEAD


def coerce(ds: Dataset, destination) -> Dataset:
    """The dataset as this destination is configured to receive it."""
    if not destination.strip_private and not destination.remove:
        return ds
    from ..config.mpps import parse_tag

    out = Dataset()
    for elem in ds:
        out.add(elem)
    if destination.strip_private:
        out.remove_private_tags()
    for text in destination.remove:
        tag = parse_tag(text)
        if tag is not None and tag in out:
            del out[tag]
    return out


class RelayWorker(Worker):
    """Sends the queue of one destination, in order per procedure step."""

    def __init__(self, db, destination, config, poll: float = 2.0, batch: int = 50):
        super().__init__(f"mpps-relay-{destination.name}")
        self.db = db
        self.dest = destination
        self.config = config
        self.poll = poll
        self.batch = batch
        self.counters = {"delivered": 0, "retried": 0, "dead": 0}
        self.connected = False
        self.last_error = ""

    def _ae(self):
        cfg = self.config
        ae = make_ae(cfg.mpps.ae_title, cfg.network, 1)
        ae.add_requested_context(model.MPPS_SOP_CLASS, TRANSFER_SYNTAXES)
        return ae

    def step(self) -> float:
        due = self.db.query(journal.DUE_SQL, (self.dest.name, time.time(), self.batch))
        if not due:
            return self._next_wait()
        ae = self._ae()
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title,
                             evt_handlers=NODELAY_HANDLERS)
        if not assoc.is_established:
            reason = self._refusal_text(assoc)
            permanent = assoc.is_rejected and _rejected_permanently(assoc)
            self.connected = False
            self.last_error = reason
            for row in due:
                self._outcome(row, DEAD if permanent else RETRY, None, reason)
            return self._next_wait()
        self.connected = True
        if not any(cx.abstract_syntax == model.MPPS_SOP_CLASS for cx in assoc.accepted_contexts):
            assoc.release()
            for row in due:
                self._outcome(row, DEAD, None, f"{self.dest.ae_title} does not accept the "
                              "MPPS SOP Class (presentation context rejected)")
            return self._next_wait()
        try:
            while due and not self.stopping.is_set():
                for row in due:
                    if not assoc.is_established:
                        self._outcome(row, RETRY, None, "association lost")
                        continue
                    self._send(assoc, row)
                due = self.db.query(journal.DUE_SQL, (self.dest.name, time.time(),
                                                      self.batch))
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return 0 if due else self._next_wait()

    def _next_wait(self) -> float:
        row = self.db.query_one(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE destination = ? "
            "AND state = 'pending'", (self.dest.name,))
        nxt = row[0] if row else None
        if nxt is None:
            return self.poll
        return max(0.05, min(self.poll, nxt - time.time()))

    def _send(self, assoc, row) -> None:
        ds = coerce(journal.from_bytes(row["dataset"]), self.dest)
        uid = row["sop_instance_uid"]
        resend = row["attempts"] > 0
        try:
            if row["operation"] == model.N_CREATE:
                status_ds, _ = assoc.send_n_create(ds, model.MPPS_SOP_CLASS, uid)
            else:
                status_ds, _ = assoc.send_n_set(ds, model.MPPS_SOP_CLASS, uid)
        except (ValueError, TypeError) as exc:
            # pynetdicom could not encode the dataset: sending it again cannot help.
            self._outcome(row, DEAD, None, f"{row['operation']} cannot be encoded: {exc}")
            return
        status = status_ds.get("Status") if status_ds is not None else None
        error_id = status_ds.get("ErrorID") if status_ds is not None else None
        comment = str(status_ds.get("ErrorComment", "") or "") if status_ds is not None else ""
        if status is None:
            text = "no response (association aborted or timed out)"
        else:
            text = st.describe(status) + (f": {comment}" if comment else "")
        verdict = classify(row["operation"], status, error_id, resend)
        self._outcome(row, verdict, status, "" if verdict == DELIVERED else
                      f"{row['operation']} answered {text}")

    def _outcome(self, row, verdict: str, status: int | None, reason: str) -> None:
        now = time.time()
        cfg = self.config.mpps
        attempts = row["attempts"] + 1
        if verdict == RETRY and cfg.dead_letter_hours and \
                now - row["created_at"] > cfg.dead_letter_hours * 3600:
            verdict = DEAD
            reason = f"{reason} (undelivered for more than {cfg.dead_letter_hours:g} h)"
        with self.db.write() as conn:
            if verdict == DELIVERED:
                conn.execute("UPDATE deliveries SET state = 'done', attempts = ?, "
                             "delivered_at = ?, last_status = ?, last_error = '' "
                             "WHERE id = ?", (attempts, now, status, row["id"]))
            elif verdict == DEAD:
                conn.execute("UPDATE deliveries SET state = 'dead', attempts = ?, "
                             "last_status = ?, last_error = ? WHERE id = ?",
                             (attempts, status, reason, row["id"]))
            else:
                delay = backoff(attempts, cfg.retry_initial_seconds, cfg.retry_max_seconds)
                conn.execute("UPDATE deliveries SET attempts = ?, next_attempt_at = ?, "
                             "last_status = ?, last_error = ? WHERE id = ?",
                             (attempts, now + delay, status, reason, row["id"]))
        key = {DELIVERED: "delivered", DEAD: "dead", RETRY: "retried"}[verdict]
        self.counters[key] += 1
        if verdict == DEAD:
            LOGGER.error("%s: %s of %s moved to dead-letter: %s", self.dest.name,
                         row["operation"], row["sop_instance_uid"], reason)
        elif verdict == RETRY:
            LOGGER.warning("%s: %s of %s will be retried: %s", self.dest.name,
                           row["operation"], row["sop_instance_uid"], reason)
        else:
            LOGGER.info("%s: %s of %s delivered", self.dest.name, row["operation"],
                        row["sop_instance_uid"])

    def _refusal_text(self, assoc) -> str:
        return refusal_text(assoc, f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}")


def _rejected_permanently(assoc) -> bool:
    """A permanent rejection (result 1) from the peer, e.g. an unknown called AE."""
    try:
        return assoc.acceptor.primitive.result == 0x01
    except AttributeError:
        return False
