"""The N-ACTION side: validate a storage commitment request and journal it.

A request is answered with Success only after it is committed to the
router's index (WAL, ``synchronous=FULL``), so a report is owed even if the
process dies the next instant.  Invalid requests are refused with a status
naming the problem and leave nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..dimse import status as st
from ..store import Database
from ..uids import is_uid
from .model import DUPLICATE_TRANSACTION, move

#: N-ACTION statuses the SCP returns, with their meaning (published in the
#: conformance statement).
ACTION_STATUSES = [
    (st.SUCCESS, "The request is journaled durably; a report will follow."),
    (st.MISSING_ATTRIBUTE, "Transaction UID, Referenced SOP Sequence, or a Referenced SOP "
                           "Class/Instance UID in an item is missing."),
    (st.MISSING_ATTRIBUTE_VALUE, "Transaction UID or Referenced SOP Sequence is empty."),
    (st.INVALID_ATTRIBUTE_VALUE, "Transaction UID or a referenced UID is not a valid UID."),
    (st.NO_SUCH_ACTION_TYPE, "Action Type ID is not 1 (Request Storage Commitment)."),
    (st.NO_SUCH_OBJECT_INSTANCE, "Requested SOP Instance UID is not the well-known instance "
                                 "1.2.840.10008.1.20.1.1."),
    (st.RESOURCE_LIMITATION, "More instances than `commitment.max_references`."),
    (st.PROCESSING_FAILURE, "The Action Information cannot be decoded, or the request cannot "
                            "be journaled (nothing is kept; the requester may retry)."),
]


class ActionError(ValueError):
    """A request the SCP refuses, with the status to answer."""

    def __init__(self, status: int, comment: str):
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


def _uid(ds, keyword: str, where: str) -> str:
    if keyword not in ds:
        raise ActionError(st.MISSING_ATTRIBUTE, f"{where}{keyword} missing")
    value = ds[keyword].value
    if value is None or str(value).strip() == "":
        raise ActionError(st.MISSING_ATTRIBUTE_VALUE, f"{where}{keyword} empty")
    text = str(value).strip().rstrip("\0")
    if not is_uid(text):
        raise ActionError(st.INVALID_ATTRIBUTE_VALUE, f"{where}{keyword} not a UID")
    return text


def parse_action(ds, max_references: int) -> tuple[str, list[Reference]]:
    """Transaction UID and references of an N-ACTION's Action Information.

    Raises :class:`ActionError` naming the first problem found.
    """
    if ds is None:
        raise ActionError(st.MISSING_ATTRIBUTE, "no Action Information")
    transaction_uid = _uid(ds, "TransactionUID", "")
    if "ReferencedSOPSequence" not in ds:
        raise ActionError(st.MISSING_ATTRIBUTE, "ReferencedSOPSequence missing")
    seq = ds.ReferencedSOPSequence
    if seq is None or len(seq) == 0:
        raise ActionError(st.MISSING_ATTRIBUTE_VALUE, "ReferencedSOPSequence empty")
    if len(seq) > max_references:
        raise ActionError(st.RESOURCE_LIMITATION,
                          f"{len(seq)} references, at most {max_references}")
    refs = []
    for i, item in enumerate(seq, 1):
        where = f"item {i}: "
        refs.append(Reference(_uid(item, "ReferencedSOPClassUID", where),
                              _uid(item, "ReferencedSOPInstanceUID", where)))
    return transaction_uid, refs


@dataclass(frozen=True)
class Journaled:
    request_id: int
    #: "new", "repeat" (the same request again) or "conflict" (same Transaction
    #: UID, other references: every item fails with 0131H).
    kind: str


def journal(db: Database, transaction_uid: str, refs: list[Reference], *, calling_aet: str,
            called_aet: str, peer_address: str, mode: str, local_timeout: float,
            timeout: float, now: float | None = None) -> Journaled:
    """Commit the request and its items in one transaction; return its row id.

    A requester that did not get our N-ACTION answer (or our report) may send
    the same request again: it is recognised by Transaction UID and calling
    AE, not duplicated, and its report is sent again.  The same Transaction
    UID with other references is journaled as a request whose every item
    fails with Duplicate Transaction UID (0131H).
    """
    now = time.time() if now is None else now
    wanted = [(r.sop_class_uid, r.sop_instance_uid) for r in refs]
    with db.write() as conn:
        previous = conn.execute(
            "SELECT id, state FROM commit_requests WHERE transaction_uid = ? AND "
            "calling_aet = ? ORDER BY id DESC", (transaction_uid, calling_aet)).fetchall()
        for row in previous:
            items = [(r[0], r[1]) for r in conn.execute(
                "SELECT sop_class_uid, sop_instance_uid FROM commit_items "
                "WHERE request_id = ? ORDER BY seq", (row["id"],))]
            if items == wanted:
                if row["state"] in ("reported", "abandoned"):
                    move(conn, row["id"], row["state"], "ready", next_report_at=now,
                         report_attempts=0, last_error="")
                return Journaled(row["id"], "repeat")
        conflict = bool(previous)
        cur = conn.execute(
            "INSERT INTO commit_requests (transaction_uid, calling_aet, called_aet, "
            "peer_address, mode, state, received_at, missing_deadline, deadline, items, "
            "failed, resolved_at, event_type, next_report_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (transaction_uid, calling_aet, called_aet, peer_address, mode,
             "ready" if conflict else "waiting", now, now + local_timeout,
             now + (local_timeout if mode == "local" else timeout), len(refs),
             len(refs) if conflict else 0, now if conflict else None,
             2 if conflict else None, now if conflict else None))
        request_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO commit_items (request_id, seq, sop_class_uid, sop_instance_uid, "
            "state, failure_reason, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(request_id, i, c, s, "failed" if conflict else "pending",
              DUPLICATE_TRANSACTION if conflict else None, now if conflict else None)
             for i, (c, s) in enumerate(wanted)])
    return Journaled(request_id, "conflict" if conflict else "new")
