"""The MPPS journal and its queues, in ``<state_dir>/mpps/index.db``.

``steps`` holds each procedure step's merged current attributes, ``messages``
every accepted N-CREATE/N-SET exactly as received (the journal), and
``deliveries`` one row per message and destination (the relay queue).  A
request is answered with success only after its journal row, the merged
state and the delivery rows are committed in one transaction (WAL,
``synchronous=FULL``: the commit is fsync'd).  ``watched_studies`` and
``notifications`` are the durable state of the study-arrived notifications.

Delivery states: ``pending`` (waiting or being retried), ``done``, ``dead``
(refused permanently or too old; ``dicombox mpps retry`` puts it back).
"""

from __future__ import annotations

import json
import sqlite3
import time
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from ..store import Migration

MIGRATIONS = [
    Migration("mpps-1", """
        CREATE TABLE steps (
            sop_instance_uid TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            dataset BLOB NOT NULL,
            patient_id TEXT NOT NULL DEFAULT '',
            patient_name TEXT NOT NULL DEFAULT '',
            accession_number TEXT NOT NULL DEFAULT '',
            study_instance_uid TEXT NOT NULL DEFAULT '',
            modality TEXT NOT NULL DEFAULT '',
            pps_id TEXT NOT NULL DEFAULT '',
            calling_aet TEXT NOT NULL DEFAULT '',
            peer_address TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            notify_state TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX steps_updated ON steps(updated_at);
        CREATE INDEX steps_notify ON steps(notify_state);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            sop_instance_uid TEXT NOT NULL REFERENCES steps(sop_instance_uid),
            seq INTEGER NOT NULL,
            operation TEXT NOT NULL,
            dataset BLOB NOT NULL,
            state_after TEXT NOT NULL,
            calling_aet TEXT NOT NULL DEFAULT '',
            received_at REAL NOT NULL,
            UNIQUE (sop_instance_uid, seq)
        );
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages(id),
            destination TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            last_status INTEGER,
            created_at REAL NOT NULL,
            delivered_at REAL,
            UNIQUE (message_id, destination)
        );
        CREATE INDEX deliveries_due ON deliveries(destination, state, next_attempt_at);
        CREATE INDEX deliveries_step ON deliveries(destination, sop_instance_uid, seq);
        CREATE TABLE watched_studies (
            study_instance_uid TEXT PRIMARY KEY,
            last_received_at REAL NOT NULL,
            notified_received_at REAL
        );
        CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            study_instance_uid TEXT NOT NULL,
            kind TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            reason TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            last_status INTEGER,
            created_at REAL NOT NULL,
            delivered_at REAL
        );
        CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
        CREATE TABLE service_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
    """),
]

PENDING, DONE, DEAD = "pending", "done", "dead"


def to_bytes(ds: Dataset) -> bytes:
    """Explicit VR Little Endian, the journal's encoding."""
    data = encode(ds, False, True)
    if data is None:
        raise ValueError("the dataset cannot be encoded")
    return data


def from_bytes(data: bytes) -> Dataset:
    return decode(BytesIO(data), False, True)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def _study_uid(ds: Dataset) -> str:
    seq = ds.get("ScheduledStepAttributesSequence") or []
    for item in seq:
        uid = item.get("StudyInstanceUID")
        if uid:
            return str(uid)
    return ""


def _accession(ds: Dataset) -> str:
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        if item.get("AccessionNumber"):
            return str(item.AccessionNumber)
    return ""


def current(conn: sqlite3.Connection, uid: str) -> tuple[str, Dataset] | None:
    row = conn.execute("SELECT state, dataset FROM steps WHERE sop_instance_uid = ?",
                       (uid,)).fetchone()
    if row is None:
        return None
    return row["state"], from_bytes(row["dataset"])


def record(conn: sqlite3.Connection, uid: str, operation: str, request: Dataset,
           merged: Dataset, state: str, destinations: list[str], calling_aet: str,
           address: str, now: float | None = None) -> int:
    """Journal one accepted request and queue it for every destination.

    Runs inside the caller's write transaction.  Returns the message id.
    """
    now = now or time.time()
    blob = to_bytes(merged)
    notify = "waiting" if state == "COMPLETED" else ""
    if operation == "N-CREATE":
        conn.execute(
            "INSERT INTO steps (sop_instance_uid, state, dataset, patient_id, patient_name, "
            "accession_number, study_instance_uid, modality, pps_id, calling_aet, "
            "peer_address, created_at, updated_at, notify_state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, state, blob, _text(merged, "PatientID"), _text(merged, "PatientName"),
             _accession(merged), _study_uid(merged), _text(merged, "Modality"),
             _text(merged, "PerformedProcedureStepID"), calling_aet, address, now, now, notify))
        seq = 0
    else:
        conn.execute("UPDATE steps SET state = ?, dataset = ?, updated_at = ?, "
                     "notify_state = CASE WHEN ? != '' THEN ? ELSE notify_state END "
                     "WHERE sop_instance_uid = ?", (state, blob, now, notify, notify, uid))
        seq = conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM messages "
                           "WHERE sop_instance_uid = ?", (uid,)).fetchone()[0]
    cur = conn.execute(
        "INSERT INTO messages (sop_instance_uid, seq, operation, dataset, state_after, "
        "calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (uid, seq, operation, to_bytes(request), state, calling_aet, now))
    message_id = cur.lastrowid
    for name in destinations:
        conn.execute("INSERT INTO deliveries (message_id, destination, sop_instance_uid, seq, "
                     "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                     (message_id, name, uid, seq, now, now))
    return message_id


#: The head of each step's queue for one destination: the lowest undelivered
#: message, and only if it is due.  A message never overtakes an earlier one of
#: the same step (N-SET waits behind its N-CREATE); other steps are independent.
DUE_SQL = """
    SELECT d.id, d.message_id, d.sop_instance_uid, d.seq, d.attempts, d.created_at,
           m.operation, m.dataset
    FROM deliveries d JOIN messages m ON m.id = d.message_id
    WHERE d.destination = ? AND d.state = 'pending' AND d.next_attempt_at <= ?
      AND NOT EXISTS (SELECT 1 FROM deliveries e
                      WHERE e.destination = d.destination
                        AND e.sop_instance_uid = d.sop_instance_uid
                        AND e.seq < d.seq AND e.state != 'done')
    ORDER BY d.id LIMIT ?
"""


def retry(conn: sqlite3.Connection, step: str | None = None, destination: str | None = None,
          include_pending: bool = True, now: float | None = None) -> int:
    """Put dead deliveries (and waiting ones) back to be sent now; return how many."""
    now = now or time.time()
    where = ["state IN ('dead', 'pending')" if include_pending else "state = 'dead'"]
    params: list = []
    if step:
        where.append("sop_instance_uid = ?")
        params.append(step)
    if destination:
        where.append("destination = ?")
        params.append(destination)
    cur = conn.execute(
        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, "
        "attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END, "
        "created_at = CASE WHEN state = 'dead' THEN ? ELSE created_at END "
        f"WHERE {' AND '.join(where)}", [now, now, *params])
    return cur.rowcount


def retry_notifications(conn: sqlite3.Connection, study: str | None = None,
                        now: float | None = None) -> int:
    now = now or time.time()
    sql = ("UPDATE notifications SET state = 'pending', next_attempt_at = ?, "
           "attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END, "
           "created_at = CASE WHEN state = 'dead' THEN ? ELSE created_at END "
           "WHERE state IN ('dead', 'pending')")
    params: list = [now, now]
    if study:
        sql += " AND study_instance_uid = ?"
        params.append(study)
    return conn.execute(sql, params).rowcount


def set_state(conn: sqlite3.Connection, key: str, value: dict) -> None:
    conn.execute("INSERT INTO service_state VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                 "value = excluded.value, updated_at = excluded.updated_at",
                 (key, json.dumps(value), time.time()))
