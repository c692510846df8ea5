"""Re-evaluates waiting requests until every referenced instance is resolved.

Each pass reads, per waiting request, its unresolved items joined with the
spool index (and, in the forwarded and upstream modes, the forwarding
queue), asks :func:`~dicombox.commit.model.judge` about each one, and
commits the verdicts.  When nothing is left unresolved the request becomes
``ready`` and the report sender is woken.  The pass runs every
``commitment.check_interval`` seconds while anything waits, and at once when
a request arrives or an instance is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import groupby

from ..lifecycle import Worker
from ..store import Database
from .model import Copy, has_forward_queue, judge, move

LOGGER = logging.getLogger("dicombox.commit")

#: Seconds between sweeps of finished requests older than ``keep_days``.
SWEEP_INTERVAL = 300.0

_LOCAL = """
    SELECT ci.seq, ci.sop_class_uid AS asked, i.sop_class_uid AS held,
           NULL AS destination, NULL AS fstate, NULL AS committed_at, 0 AS refused
    FROM commit_items ci LEFT JOIN instances i ON i.sop_instance_uid = ci.sop_instance_uid
    WHERE ci.request_id = ? AND ci.state = 'pending' ORDER BY ci.seq
"""

_FORWARDED = """
    SELECT ci.seq, ci.sop_class_uid AS asked, i.sop_class_uid AS held,
           f.destination, f.state AS fstate, f.committed_at,
           EXISTS (SELECT 1 FROM commit_upstream_items ui
                   JOIN commit_upstream u ON u.id = ui.upstream_id
                   WHERE ui.queue_id = f.id AND ui.state = 'failed'
                     AND u.created_at >= COALESCE(f.delivered_at, 0)) AS refused
    FROM commit_items ci
    LEFT JOIN instances i ON i.sop_instance_uid = ci.sop_instance_uid
    LEFT JOIN forward_queue f ON f.instance_id = i.id
    WHERE ci.request_id = ? AND ci.state = 'pending' ORDER BY ci.seq
"""


class Evaluator(Worker):
    """Resolves the items of waiting requests; see the module docstring."""

    def __init__(self, db: Database, config, on_ready: Callable[[], None]):
        super().__init__("commit-evaluator")
        self.db = db
        self.section = config.commitment
        self.upstream = frozenset(u.destination for u in config.commitment.upstream)
        self.on_ready = on_ready
        self._last_sweep = 0.0
        self._warned = False

    def step(self) -> float:
        now = time.time()
        waiting = self.db.query("SELECT id, mode, missing_deadline, deadline "
                                "FROM commit_requests WHERE state = 'waiting' ORDER BY id")
        forwarding = has_forward_queue(self.db.read_conn()) if waiting else True
        if not forwarding and not self._warned and any(r["mode"] != "local" for r in waiting):
            LOGGER.warning("forwarding is not set up (no forward_queue table): forwarded and "
                           "upstream commitments cannot succeed")
            self._warned = True
        ready = sum(self.evaluate(r, now, forwarding) for r in waiting)
        if ready:
            self.on_ready()
        if now - self._last_sweep > SWEEP_INTERVAL:
            self._last_sweep = now
            self.sweep(now)
        return self.section.check_interval if waiting else 5.0

    def evaluate(self, req, now: float, forwarding: bool) -> bool:
        """Judge the pending items of one request; True if it became ready."""
        mode = req["mode"]
        sql = _FORWARDED if mode != "local" and forwarding else _LOCAL
        rows = self.db.query(sql, (req["id"],))
        changes = []
        for seq, group in groupby(rows, key=lambda r: r["seq"]):
            group = list(group)
            first = group[0]
            copies = None
            if mode == "local":
                copies = []
            elif forwarding:
                copies = [Copy(r["destination"], r["fstate"], r["committed_at"] is not None,
                               bool(r["refused"])) for r in group if r["destination"]]
            verdict = judge(mode, first["asked"], first["held"], copies, now,
                            req["missing_deadline"], req["deadline"], self.upstream,
                            self.section.unsupported_destinations)
            if verdict.state != "pending":
                changes.append((verdict.state, verdict.reason, now, req["id"], seq))
        if not changes and rows:
            return False
        with self.db.write() as conn:
            conn.executemany("UPDATE commit_items SET state = ?, failure_reason = ?, "
                             "resolved_at = ? WHERE request_id = ? AND seq = ? "
                             "AND state = 'pending'", changes)
            counts = conn.execute(
                "SELECT COALESCE(SUM(state = 'committed'), 0) AS ok, "
                "COALESCE(SUM(state = 'failed'), 0) AS failed, "
                "COALESCE(SUM(state = 'pending'), 0) AS pending "
                "FROM commit_items WHERE request_id = ?", (req["id"],)).fetchone()
            conn.execute("UPDATE commit_requests SET committed = ?, failed = ? WHERE id = ?",
                         (counts["ok"], counts["failed"], req["id"]))
            if counts["pending"]:
                return False
            moved = move(conn, req["id"], "waiting", "ready", resolved_at=now,
                         event_type=1 if counts["failed"] == 0 else 2, next_report_at=now)
        if moved:
            LOGGER.info("commitment request %d resolved: %d committed, %d failed",
                        req["id"], counts["ok"], counts["failed"])
        return moved

    def sweep(self, now: float) -> None:
        """Forget finished requests (and upstream transactions) past ``keep_days``."""
        cutoff = now - self.section.keep_days * 86400
        with self.db.write() as conn:
            gone = conn.execute(
                "DELETE FROM commit_requests WHERE state IN ('reported', 'abandoned') "
                "AND COALESCE(reported_at, resolved_at, received_at) < ?", (cutoff,)).rowcount
            conn.execute("DELETE FROM commit_upstream WHERE state IN ('answered', 'refused') "
                         "AND created_at < ?", (cutoff,))
        if gone:
            LOGGER.info("forgot %d finished commitment request(s) older than %g days", gone,
                        self.section.keep_days)
