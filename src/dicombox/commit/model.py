"""The durable model of storage commitment: tables, states and the verdict rules.

A request (one N-ACTION) is a row of ``commit_requests``; each instance it
references is a row of ``commit_items``.  Both are committed before the
N-ACTION is answered, so a request survives any restart.  A request moves
through the states of :data:`REQUEST_TRANSITIONS`; every change goes through
:func:`move`, which refuses a transition the table does not list.

What "committed" means is decided by :func:`judge`, a pure function of what
the index says about one instance; it is the only place the three modes
differ.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..store import Migration

# Failure Reasons (0008,1197) of PS3.4 J.3.3 / PS3.3 C.14.1.1.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION = 0x0131

FAILURE_REASONS = {
    PROCESSING_FAILURE: "Processing failure",
    NO_SUCH_OBJECT: "No such object instance",
    CLASS_INSTANCE_CONFLICT: "Class-instance conflict",
    DUPLICATE_TRANSACTION: "Duplicate transaction UID",
}

#: Failure Reason -> when the box reports it (published in the conformance statement).
FAILURE_WHEN = {
    NO_SUCH_OBJECT: "The instance is not in the spool `commitment.local_timeout` seconds after "
                    "the request (never received, or already removed by the spool cleanup).",
    CLASS_INSTANCE_CONFLICT: "The instance is in the spool with another SOP Class UID than "
                             "the request names.",
    PROCESSING_FAILURE: "forwarded/upstream modes: a destination has it in dead-letter, "
                        "reported that it did not commit it, or (`unsupported_destinations = "
                        "\"fail\"`) cannot commit; or it is still not delivered (committed) "
                        "`commitment.timeout` seconds after the request.",
    DUPLICATE_TRANSACTION: "The Transaction UID was already used by the same calling AE for "
                           "other instances (every item of the new request fails).",
}

#: What each mode requires before an instance is reported as committed.
MODES = [
    ("local", "the instance is in the spool (fsync'd, indexed) with the SOP Class named in "
              "the request"),
    ("forwarded", "as `local`, and every destination it was routed to acknowledged it "
                  "(forwarding queue row `delivered`); an instance routed nowhere is "
                  "committed as in `local`"),
    ("upstream", "as `local`, and every destination listed in `[[commitment.upstream]]` "
                 "committed it through its own Storage Commitment SCP; other destinations "
                 "count per `commitment.unsupported_destinations` (`delivered`: their "
                 "acknowledgement; `fail`: never)"),
]

MIGRATIONS = [
    Migration("commitment-1", """
        CREATE TABLE commit_requests (
            id INTEGER PRIMARY KEY,
            transaction_uid TEXT NOT NULL,
            calling_aet TEXT NOT NULL,
            called_aet TEXT NOT NULL DEFAULT '',
            peer_address TEXT NOT NULL DEFAULT '',
            mode TEXT NOT NULL,
            state TEXT NOT NULL,
            received_at REAL NOT NULL,
            missing_deadline REAL NOT NULL,
            deadline REAL NOT NULL,
            items INTEGER NOT NULL,
            committed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            resolved_at REAL,
            event_type INTEGER,
            next_report_at REAL,
            report_attempts INTEGER NOT NULL DEFAULT 0,
            reported_at REAL,
            reported_via TEXT NOT NULL DEFAULT '',
            last_error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX commit_requests_state ON commit_requests(state, next_report_at);
        CREATE INDEX commit_requests_txn ON commit_requests(transaction_uid, calling_aet);
        CREATE TABLE commit_items (
            request_id INTEGER NOT NULL REFERENCES commit_requests(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            state TEXT NOT NULL,
            failure_reason INTEGER,
            resolved_at REAL,
            PRIMARY KEY (request_id, seq)
        );
        CREATE TABLE commit_upstream (
            id INTEGER PRIMARY KEY,
            transaction_uid TEXT NOT NULL UNIQUE,
            destination TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            requested_at REAL,
            answered_at REAL,
            last_error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX commit_upstream_destination ON commit_upstream(destination, state);
        CREATE TABLE commit_upstream_items (
            upstream_id INTEGER NOT NULL REFERENCES commit_upstream(id) ON DELETE CASCADE,
            queue_id INTEGER NOT NULL,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            state TEXT NOT NULL,
            failure_reason INTEGER,
            PRIMARY KEY (upstream_id, queue_id)
        );
        CREATE INDEX commit_upstream_items_queue ON commit_upstream_items(queue_id)
    """),
]

#: (from, to) -> why.  A request is ``waiting`` while any of its instances is
#: unresolved, ``ready`` while its report is due, ``reported`` once the
#: requester acknowledged the N-EVENT-REPORT, ``abandoned`` when no report
#: could be delivered within ``commitment.report_give_up``.
REQUEST_TRANSITIONS = {
    ("waiting", "ready"): "every referenced instance is resolved",
    ("ready", "ready"): "a report attempt failed; the next one is scheduled",
    ("ready", "reported"): "the requester answered the N-EVENT-REPORT with Success",
    ("ready", "abandoned"): "no report could be delivered within commitment.report_give_up",
    ("reported", "ready"): "the requester sent the same request again",
    ("abandoned", "ready"): "the requester sent the same request again",
}

REQUEST_STATES = ("waiting", "ready", "reported", "abandoned")
ITEM_STATES = ("pending", "committed", "failed")

#: Upstream transactions (the box asking a destination): ``new`` is journaled
#: before the N-ACTION is sent, ``requested`` once the destination accepted it,
#: ``answered`` once its N-EVENT-REPORT arrived, ``refused`` if the N-ACTION
#: could not be sent, was refused, or was interrupted by a restart (its
#: instances are asked again later).
UPSTREAM_TRANSITIONS = {
    ("new", "requested"): "the destination accepted the N-ACTION",
    ("new", "refused"): "the association or the N-ACTION failed",
    ("new", "answered"): "the report arrived before the N-ACTION answer was recorded",
    ("requested", "answered"): "the destination's N-EVENT-REPORT arrived",
    ("refused", "answered"): "a report arrived for a request the box had counted as failed",
}


class InvalidTransition(RuntimeError):
    """A state change the transition table does not allow."""


def move(conn: sqlite3.Connection, request_id: int, old: str, new: str, **fields) -> bool:
    """Move request ``request_id`` from ``old`` to ``new``, setting ``fields``.

    Returns ``False`` if the request was no longer in ``old`` (another thread
    moved it first); raises :class:`InvalidTransition` for a change the
    table does not list.
    """
    if (old, new) not in REQUEST_TRANSITIONS:
        raise InvalidTransition(f"commitment request {request_id}: {old} -> {new}")
    sets = ", ".join(["state = ?", *(f"{k} = ?" for k in fields)])
    cur = conn.execute(f"UPDATE commit_requests SET {sets} WHERE id = ? AND state = ?",
                       [new, *fields.values(), request_id, old])
    return cur.rowcount == 1


def move_upstream(conn: sqlite3.Connection, upstream_id: int, old: str, new: str,
                  **fields) -> bool:
    if (old, new) not in UPSTREAM_TRANSITIONS:
        raise InvalidTransition(f"upstream commitment {upstream_id}: {old} -> {new}")
    sets = ", ".join(["state = ?", *(f"{k} = ?" for k in fields)])
    cur = conn.execute(f"UPDATE commit_upstream SET {sets} WHERE id = ? AND state = ?",
                       [new, *fields.values(), upstream_id, old])
    return cur.rowcount == 1


@dataclass(frozen=True)
class Copy:
    """One forwarding queue row of an instance, as the verdict needs it."""

    destination: str
    state: str                  # pending | sending | retry | delivered | dead
    committed: bool             # the destination committed it (upstream mode)
    refused: bool               # the destination reported it failed since delivery


@dataclass(frozen=True)
class Verdict:
    state: str                  # pending | committed | failed
    reason: int | None = None


PENDING = Verdict("pending")
COMMITTED = Verdict("committed")


def judge(mode: str, asked_class: str, held_class: str | None, copies: list[Copy] | None,
          now: float, missing_deadline: float, deadline: float,
          upstream_destinations: frozenset[str] = frozenset(),
          unsupported: str = "delivered") -> Verdict:
    """Whether one referenced instance is committed, failed, or not yet known.

    ``held_class`` is the SOP class of the instance in the spool (``None``
    if it is not there); ``copies`` its forwarding queue rows (``None`` when
    the forwarding table does not exist, so nothing can be confirmed).
    Success is never given for what the box does not hold or, in the
    forwarded and upstream modes, has not delivered or seen committed.
    """
    if held_class is None:
        return Verdict("failed", NO_SUCH_OBJECT) if now >= missing_deadline else PENDING
    if held_class != asked_class:
        return Verdict("failed", CLASS_INSTANCE_CONFLICT)
    if mode == "local":
        return COMMITTED
    done = copies is not None
    for copy in copies or ():
        if copy.state == "dead":
            return Verdict("failed", PROCESSING_FAILURE)
        if mode == "forwarded":
            done = done and copy.state == "delivered"
        elif copy.destination in upstream_destinations:
            if copy.refused:
                return Verdict("failed", PROCESSING_FAILURE)
            done = done and copy.committed
        elif unsupported == "fail":
            return Verdict("failed", PROCESSING_FAILURE)
        else:
            done = done and copy.state == "delivered"
    if done:
        return COMMITTED
    return Verdict("failed", PROCESSING_FAILURE) if now >= deadline else PENDING


def has_forward_queue(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                       "AND name = 'forward_queue'").fetchone()
    return row is not None
