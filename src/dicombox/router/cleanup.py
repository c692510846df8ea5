"""Spool cleanup, in the spirit of the reference product's Auto Delete.

Forwarded instances are removed from the spool:

* by age: received more than ``cleanup.max_age_hours`` ago;
* by free space: when free space falls below ``cleanup.red_zone_mb``, the
  oldest forwarded instances go until it is back above ``cleanup.green_zone_mb``.

Only an instance that every destination it was routed to has delivered is
ever removed (and, when storage commitment runs in ``upstream`` mode, that
every destination the box asks to commit, ``[[commitment.upstream]]``, has
committed: ``committed_at`` set on its row; the other destinations cannot
commit and count once they delivered).  The condition is part of the
``DELETE`` itself, so a row re-queued meanwhile keeps its instance.  Instances
routed nowhere are kept unless ``cleanup.delete_unrouted``.  The index row is
deleted first (its queue rows cascade), then the file: a crash in between
leaves an unindexed file, which the next start removes as an orphan.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

from ..lifecycle import Worker
from .queue import DELIVERED

LOGGER = logging.getLogger("dicombox.cleanup")

#: Instances removed per transaction.
CHUNK = 200
#: Empty study folders older than this are removed.
EMPTY_DIR_SECONDS = 24 * 3600


def requires_commitment(config) -> tuple[str, ...]:
    """The destinations whose ``committed_at`` deletion waits for: those asked to commit,
    when some storage commitment mode (global or a modality's) is ``upstream``."""
    commitment = getattr(config, "commitment", None)
    if commitment is None or not getattr(commitment, "enabled", True):
        return ()
    modes = {getattr(commitment, "mode", "local")}
    modes |= {getattr(ae, "mode", None) for ae in getattr(config, "remote_aes", ())}
    if "upstream" not in modes:
        return ()
    return tuple(getattr(u, "destination", "") for u in getattr(commitment, "upstream", ()))


def eligible(require_commit: tuple[str, ...] | list[str], include_unrouted: bool) -> str:
    """SQL condition on ``instances`` (unaliased) for instances that may be removed."""
    pending = f"q.state != '{DELIVERED}'"
    if require_commit:
        names = ", ".join("'" + n.replace("'", "''") + "'" for n in require_commit)
        pending += f" OR (q.committed_at IS NULL AND q.destination IN ({names}))"
    cond = (f"NOT EXISTS (SELECT 1 FROM forward_queue q WHERE q.instance_id = instances.id "
            f"AND ({pending}))")
    if not include_unrouted:
        cond += (" AND EXISTS (SELECT 1 FROM forward_queue q "
                 "WHERE q.instance_id = instances.id)")
    return cond


def clean(store, cfg, require_commit=(), now: float | None = None) -> dict:
    """One cleanup pass; returns what it removed."""
    now = time.time() if now is None else now
    cond = eligible(require_commit, cfg.delete_unrouted)
    result = {"by_age": 0, "by_space": 0, "bytes": 0}
    if cfg.max_age_hours > 0:
        cutoff = now - cfg.max_age_hours * 3600
        while True:
            rows = store.db.query(
                f"SELECT id, path, size FROM instances WHERE received_at < ? AND {cond} "
                f"ORDER BY received_at, id LIMIT {CHUNK}", (cutoff,))
            n, size = _remove(store, rows, cond)
            result["by_age"] += n
            result["bytes"] += size
            if len(rows) < CHUNK or not n:
                break
    if cfg.red_zone_mb > 0 and store.free_bytes() < cfg.red_zone_mb * 1024 * 1024:
        green = max(cfg.green_zone_mb, cfg.red_zone_mb) * 1024 * 1024
        LOGGER.warning("free space %d MB is below the red zone (%d MB): removing the oldest "
                       "forwarded instances", store.free_bytes() // (1024 * 1024),
                       cfg.red_zone_mb)
        while store.free_bytes() < green:
            rows = store.db.query(
                f"SELECT id, path, size FROM instances WHERE {cond} "
                f"ORDER BY received_at, id LIMIT {CHUNK}")
            if not rows:
                LOGGER.error("free space is below the green zone and nothing more may be "
                             "removed (instances not yet delivered)")
                break
            n, size = _remove(store, rows, cond)
            result["by_space"] += n
            result["bytes"] += size
            if not n:
                break
    if result["by_age"] or result["by_space"]:
        LOGGER.info("cleanup removed %d instance(s) by age and %d for space (%d MB)",
                    result["by_age"], result["by_space"], result["bytes"] // (1024 * 1024))
    return result


def _remove(store, rows, cond: str) -> tuple[int, int]:
    removed, size = [], 0
    with store.db.write() as conn:
        for row in rows:
            try:
                cur = conn.execute(f"DELETE FROM instances WHERE id = ? AND path = ? AND {cond}",
                                   (row["id"], row["path"]))
            except sqlite3.IntegrityError as exc:
                # Another component's table still references the instance.
                LOGGER.debug("keeping %s: %s", row["path"], exc)
                continue
            if cur.rowcount:
                removed.append(row["path"])
                size += row["size"]
    for rel in removed:
        try:
            os.unlink(store.path_of(rel))
        except FileNotFoundError:
            pass
    return len(removed), size


def remove_empty_study_dirs(store, now: float | None = None) -> int:
    """Remove study folders emptied by cleanup (only old ones: a new instance of the
    study could be renamed into a fresh one at this very moment)."""
    now = time.time() if now is None else now
    removed = 0
    for entry in os.scandir(store.spool_dir):
        try:
            if (entry.is_dir(follow_symlinks=False)
                    and now - entry.stat().st_mtime > EMPTY_DIR_SECONDS):
                os.rmdir(entry.path)
                removed += 1
        except OSError:
            continue   # not empty, or gone
    return removed


class Cleaner(Worker):
    """Runs :func:`clean` every ``cleanup.interval`` seconds."""

    def __init__(self, store, cfg, require_commit=()):
        super().__init__("spool-cleanup")
        self.store = store
        self.cfg = cfg
        self.require_commit = require_commit
        self._lock = threading.Lock()
        self._totals = {"removed": 0, "bytes": 0, "last_run": None}
        self._last_dirs = 0.0

    def step(self) -> float:
        if not self.cfg.enabled:
            return 3600.0
        result = clean(self.store, self.cfg, self.require_commit)
        now = time.time()
        if now - self._last_dirs > 3600:
            self._last_dirs = now
            remove_empty_study_dirs(self.store, now)
        with self._lock:
            self._totals["removed"] += result["by_age"] + result["by_space"]
            self._totals["bytes"] += result["bytes"]
            self._totals["last_run"] = now
        return self.cfg.interval

    def counters(self) -> dict:
        with self._lock:
            return dict(self._totals)
