"""The forwarding queue: one row per (instance, destination), as a state machine in SQLite.

Every state change is one of the :data:`TRANSITIONS` (event -> allowed
source states -> target state); the SQL below is generated from that table,
so a row can only move the way the table says.  A row's ``created_at`` is
reset whenever it is (re)queued and serves as the claim token: a worker's
result is written only ``WHERE id = ? AND created_at = ? AND state =
'sending'``, so a row re-queued under a worker's feet (the instance was
replaced) is never marked with a stale result.

The storage commitment code reads ``state``, ``delivered_at``,
``sent_sop_instance_uid`` and writes ``committed_at``; the columns are fixed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..store import Migration

PENDING, SENDING, RETRY, DELIVERED, DEAD = "pending", "sending", "retry", "delivered", "dead"
STATES = (PENDING, SENDING, RETRY, DELIVERED, DEAD)

#: event -> (states it may leave, state it enters)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "queue": (STATES, PENDING),                 # routed (new or replaced content)
    "claim": ((PENDING, RETRY), SENDING),       # a sender takes it
    "release": ((SENDING,), PENDING),           # claimed, not attempted (association ended)
    "deliver": ((SENDING,), DELIVERED),         # success or warning status
    "fail": ((SENDING,), RETRY),                # refusal, failure status, network error
    "reject": ((SENDING,), DEAD),               # a status that will never succeed
    "expire": ((PENDING, RETRY, SENDING), DEAD),  # older than forwarding.max_age_hours
    "recover": ((SENDING,), PENDING),           # start-up: its sender died with the process
    "retry-now": ((RETRY,), PENDING),           # `dicombox queue retry`
    "revive": ((DEAD,), PENDING),               # `dicombox queue retry --dead`
    "orphan": ((PENDING, RETRY, SENDING), DEAD),  # its destination is no longer configured
}


def sources(event: str) -> str:
    """SQL list of the states ``event`` may leave (literals, so partial indexes apply)."""
    return "(" + ", ".join(f"'{s}'" for s in TRANSITIONS[event][0]) + ")"


def target(event: str) -> str:
    return TRANSITIONS[event][1]


MIGRATIONS = [
    Migration("forward-queue-1", f"""
        CREATE TABLE forward_queue (
          id INTEGER PRIMARY KEY,
          instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
          sop_instance_uid TEXT NOT NULL,
          destination TEXT NOT NULL,
          rule TEXT NOT NULL DEFAULT '',
          state TEXT NOT NULL,
          attempts INTEGER NOT NULL DEFAULT 0,
          next_attempt_at REAL NOT NULL,
          created_at REAL NOT NULL,
          delivered_at REAL,
          last_error TEXT NOT NULL DEFAULT '',
          sent_sop_instance_uid TEXT NOT NULL DEFAULT '',
          committed_at REAL,
          UNIQUE(instance_id, destination)
        );
        CREATE INDEX forward_queue_due ON forward_queue(destination, next_attempt_at)
            WHERE state IN ('{PENDING}', '{RETRY}');
        CREATE INDEX forward_queue_state ON forward_queue(destination, state);
        CREATE INDEX forward_queue_sop ON forward_queue(sop_instance_uid);
        CREATE TABLE forward_content (
          instance_id INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
          sha256 TEXT NOT NULL
        );
        CREATE TABLE forward_destinations (
          name TEXT PRIMARY KEY,
          last_error TEXT NOT NULL DEFAULT '',
          last_error_at REAL,
          last_success_at REAL
        )
    """),
]


@dataclass(frozen=True)
class Item:
    """A claimed row with what sending it needs."""

    id: int
    instance_id: int
    sop_instance_uid: str
    created_at: float
    attempts: int
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt, written back by :func:`record`."""

    item: Item
    event: str                 # deliver, fail, reject, release, expire
    error: str = ""
    sent_sop_instance_uid: str = ""
    next_attempt_at: float = 0.0


def enqueue(conn: sqlite3.Connection, instance_id: int, sop_instance_uid: str, sha256: str,
            routes: Mapping[str, str], replaced: bool, now: float) -> list[str]:
    """Queue an indexed instance for ``routes`` (destination -> rule).

    Returns the destinations whose row became pending.  A replacement with
    new content re-queues every route (and drops rows the rules no longer
    route); the same content sent again only adds rows for new routes.
    """
    same_content = False
    if replaced:
        row = conn.execute("SELECT sha256 FROM forward_content WHERE instance_id = ?",
                           (instance_id,)).fetchone()
        same_content = row is not None and row[0] == sha256
    conn.execute("INSERT INTO forward_content VALUES (?, ?) ON CONFLICT(instance_id) "
                 "DO UPDATE SET sha256 = excluded.sha256", (instance_id, sha256))
    if not routes and not replaced:
        return []
    if same_content:
        queued = []
        for dest, rule in routes.items():
            cur = conn.execute(
                "INSERT OR IGNORE INTO forward_queue (instance_id, sop_instance_uid, "
                "destination, rule, state, next_attempt_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (instance_id, sop_instance_uid, dest, rule, target("queue"), now, now))
            if cur.rowcount:
                queued.append(dest)
        return queued
    if replaced:
        marks = ", ".join("?" for _ in routes)
        conn.execute(f"DELETE FROM forward_queue WHERE instance_id = ? "
                     f"AND destination NOT IN ({marks})", (instance_id, *routes))
    for dest, rule in routes.items():
        conn.execute(
            "INSERT INTO forward_queue (instance_id, sop_instance_uid, destination, rule, "
            "state, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(instance_id, destination) DO UPDATE SET "
            "sop_instance_uid = excluded.sop_instance_uid, rule = excluded.rule, "
            "state = excluded.state, attempts = 0, next_attempt_at = excluded.next_attempt_at,"
            " created_at = excluded.created_at, delivered_at = NULL, last_error = '', "
            "sent_sop_instance_uid = '', committed_at = NULL",
            (instance_id, sop_instance_uid, dest, rule, target("queue"), now, now))
    return list(routes)


def recover(conn: sqlite3.Connection) -> int:
    """Rows claimed by a sender of a previous run go back to pending."""
    return conn.execute(f"UPDATE forward_queue SET state = '{target('recover')}' "
                        f"WHERE state IN {sources('recover')}").rowcount


def orphan(conn: sqlite3.Connection, configured: Iterable[str], now: float) -> int:
    """Undelivered rows of destinations no longer configured go to dead-letter."""
    names = list(configured)
    marks = ", ".join("?" for _ in names) or "''"
    return conn.execute(
        f"UPDATE forward_queue SET state = '{target('orphan')}', last_error = "
        f"'destination ' || destination || ' is no longer configured' "
        f"WHERE state IN {sources('orphan')} AND destination NOT IN ({marks})",
        names).rowcount


_CANDIDATES_SQL = (
    "SELECT q.id, q.instance_id, q.sop_instance_uid, q.created_at, q.attempts, "
    "i.sop_class_uid, i.transfer_syntax_uid, i.path "
    "FROM forward_queue q JOIN instances i ON i.id = q.instance_id "
    f"WHERE q.destination = ? AND q.state IN {sources('claim')} "
    "AND q.next_attempt_at <= ? ORDER BY q.next_attempt_at, q.id LIMIT ?")
_CLAIM_SQL = (f"UPDATE forward_queue SET state = '{target('claim')}' "
              f"WHERE id = ? AND state IN {sources('claim')}")


def candidates(conn: sqlite3.Connection, destination: str, now: float,
               limit: int) -> list[Item]:
    rows = conn.execute(_CANDIDATES_SQL, (destination, now, limit)).fetchall()
    return [Item(*r) for r in rows]


def mark_claimed(conn: sqlite3.Connection, items: Sequence[Item]) -> None:
    conn.executemany(_CLAIM_SQL, [(it.id,) for it in items])


def next_due(conn: sqlite3.Connection, destination: str) -> float | None:
    row = conn.execute(
        "SELECT MIN(next_attempt_at) FROM forward_queue "
        f"WHERE destination = ? AND state IN {sources('claim')}", (destination,)).fetchone()
    return row[0] if row else None


_RECORD_SQL = {
    "deliver": (f"UPDATE forward_queue SET state = '{target('deliver')}', delivered_at = ?, "
                "attempts = attempts + 1, last_error = ?, sent_sop_instance_uid = ? "
                f"WHERE id = ? AND created_at = ? AND state IN {sources('deliver')}"),
    "fail": (f"UPDATE forward_queue SET state = '{target('fail')}', next_attempt_at = ?, "
             "attempts = attempts + 1, last_error = ? "
             f"WHERE id = ? AND created_at = ? AND state IN {sources('fail')}"),
    "reject": (f"UPDATE forward_queue SET state = '{target('reject')}', "
               "attempts = attempts + 1, last_error = ? "
               f"WHERE id = ? AND created_at = ? AND state IN {sources('reject')}"),
    "expire": (f"UPDATE forward_queue SET state = '{target('expire')}', "
               "attempts = attempts + 1, last_error = ? "
               f"WHERE id = ? AND created_at = ? AND state IN {sources('expire')}"),
    "release": (f"UPDATE forward_queue SET state = '{target('release')}' "
                f"WHERE id = ? AND created_at = ? AND state IN {sources('release')}"),
}


def record(conn: sqlite3.Connection, outcomes: Iterable[Outcome], now: float) -> int:
    """Write attempt results; rows re-queued meanwhile are left alone."""
    changed = 0
    for o in outcomes:
        it = o.item
        if o.event == "deliver":
            params = (now, o.error, o.sent_sop_instance_uid, it.id, it.created_at)
        elif o.event == "fail":
            params = (o.next_attempt_at, o.error, it.id, it.created_at)
        elif o.event in ("reject", "expire"):
            params = (o.error, it.id, it.created_at)
        else:
            params = (it.id, it.created_at)
        changed += conn.execute(_RECORD_SQL[o.event], params).rowcount
    return changed


def expire(conn: sqlite3.Connection, max_age: float, now: float) -> int:
    """Rows queued longer than ``max_age`` seconds ago and not delivered go to dead."""
    hours = max_age / 3600
    # A row never attempted (its destination unreachable) takes the destination's error.
    return conn.execute(
        f"UPDATE forward_queue SET state = '{target('expire')}', last_error = "
        f"'not delivered within {hours:g} h' || COALESCE('; last error: ' || NULLIF("
        "CASE WHEN last_error != '' THEN last_error ELSE (SELECT d.last_error FROM "
        "forward_destinations d WHERE d.name = forward_queue.destination) END, ''), '') "
        f"WHERE state IN ('{PENDING}', '{RETRY}') AND created_at < ?",
        (now - max_age,)).rowcount


def requeue(conn: sqlite3.Connection, dead: bool, destination: str | None,
            now: float) -> int:
    """Operator retry: rows waiting for a retry go now; with ``dead``, dead rows too.

    A revived row gets a fresh ``created_at`` so that it is not expired again
    at once.
    """
    where, params = "", [now]
    if destination:
        where, params = " AND destination = ?", [now, destination]
    n = conn.execute(f"UPDATE forward_queue SET state = '{target('retry-now')}', "
                     f"next_attempt_at = ? WHERE state IN {sources('retry-now')}{where}",
                     params).rowcount
    if dead:
        n += conn.execute(
            f"UPDATE forward_queue SET state = '{target('revive')}', next_attempt_at = ?, "
            f"created_at = ?, attempts = 0 WHERE state IN {sources('revive')}{where}",
            [now, *params]).rowcount
    return n


def note_destination(conn: sqlite3.Connection, name: str, now: float,
                     error: str | None = None) -> None:
    """Remember a destination's last error or last success, for `dicombox queue`."""
    if error is None:
        conn.execute("INSERT INTO forward_destinations (name, last_success_at) VALUES (?, ?) "
                     "ON CONFLICT(name) DO UPDATE SET last_success_at = excluded.last_success_at",
                     (name, now))
    else:
        conn.execute("INSERT INTO forward_destinations (name, last_error, last_error_at) "
                     "VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                     "last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                     (name, error[:500], now))


def summary_entry() -> dict:
    return {"pending": 0, "retry": 0, "in_flight": 0, "delivered": 0, "dead": 0,
            "oldest_age": None, "last_error": "", "last_error_at": None,
            "last_success_at": None}


def summary(conn: sqlite3.Connection, now: float) -> dict[str, dict]:
    """Per destination: counts by state, oldest undelivered age, last error."""
    out: dict[str, dict] = {}

    def entry(name):
        return out.setdefault(name, summary_entry())

    for name, state, count, oldest in conn.execute(
            "SELECT destination, state, COUNT(*), MIN(created_at) FROM forward_queue "
            "GROUP BY destination, state"):
        e = entry(name)
        key = {SENDING: "in_flight"}.get(state, state)
        e[key] = e.get(key, 0) + count
        if state in (PENDING, RETRY, SENDING) and oldest is not None:
            age = now - oldest
            e["oldest_age"] = age if e["oldest_age"] is None else max(e["oldest_age"], age)
    try:
        rows = conn.execute("SELECT name, last_error, last_error_at, last_success_at "
                            "FROM forward_destinations").fetchall()
    except sqlite3.OperationalError:
        rows = []
    for name, error, error_at, success_at in rows:
        e = entry(name)
        e["last_error"], e["last_error_at"], e["last_success_at"] = error, error_at, success_at
    return out
