"""Media jobs: durable tables and the job state machine, written as data.

Everything the media service knows about a job is a row in
``<state_dir>/media/index.db`` (the same SQLite file as the store's
``instances`` and ``service_state`` tables), so a restart resumes every job
from its last completed step and other processes (the front panel, the CLI)
read and steer jobs without importing this package.

Tables
------
``media_jobs``: one row per job.  The front panel relies on ``id TEXT PRIMARY
KEY``, ``state TEXT``, ``created_at REAL``, ``updated_at REAL`` (Unix times),
``error TEXT`` (the last problem, in words; NULL when none) and ``progress
REAL`` (0..1, the whole job).  ``state`` is one of :data:`STATES`:

- ``collecting``: instances are still arriving for it;
- ``ready``: closed, waiting for a medium (or, with ``auto_burn = false``,
  for the button or ``dicombox media burn``); also between the volumes of a
  job that spans several media, and after an interrupted step that needs a
  fresh medium;
- ``building`` / ``writing`` / ``verifying``: the current volume's file-set
  and image are built, written, read back;
- ``done``; ``failed`` (``error`` says why; the instances are kept until an
  operator retries or deletes the job; ``auto_retry = 1`` means a freshly
  inserted medium starts it again); ``cancelled``.

Other columns: grouping (``group_kind``, ``group_key``), what it holds
(``instances``, ``bytes``, ``patient_id``, ``patient_name``, ``description``),
times (``last_instance_at``, ``closed_at``, ``started_at``, ``finished_at``),
the volume being worked on (``volume`` of ``volumes``), the attempts made on
it, ``note`` (why a ``ready`` job waits), ``detail`` (JSON: step, bytes done
and total, rate in bytes/s, ETA in seconds), ``burn_requested``, and
``medium_refused`` with ``medium_generation`` (the medium in the drive was
refused for this job; only a newly inserted one is tried).

``media_job_instances``: the instances of a job, with the attributes the
file-set needs and the file (relative to ``<state_dir>/media``) and SHA-256 it
had when it was added; ``volume`` once the job is planned.  When a resent
instance replaces a file that a closed job still needs, that job keeps a hard
link of the old file under ``jobs/<id>/keep/``.

``media_volumes``: one row per medium of a planned job, ``state`` ``planned``
→ ``built`` → ``written`` → ``verified`` (the resume points).
``media_files``: the files of each built volume with size and SHA-256 (what
verification compares with).  ``media_log``: each job's history.

``media_commands(id INTEGER PRIMARY KEY, command TEXT NOT NULL, job_id TEXT,
created_at REAL NOT NULL, handled_at REAL, result TEXT)``: requests from the
front panel and the CLI, executed by the media service about once a second
and marked handled with a one-line ``result``.  ``command`` is ``burn`` (close
and start the oldest ``ready``/``collecting`` job, or ``job_id``), ``cancel``
(the running job, or ``job_id``), ``eject``, ``retry`` (``job_id``) or
``delete`` (``job_id``).  Anyone may insert a row; only the service handles it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..store import Database, Migration
from ..store.fsutil import fsync_dir, makedirs_durable
from . import scratch

COLLECTING = "collecting"
READY = "ready"
BUILDING = "building"
WRITING = "writing"
VERIFYING = "verifying"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (COLLECTING, READY, BUILDING, WRITING, VERIFYING, DONE, FAILED, CANCELLED)
#: States in which a step runs (or ran when the process stopped).
ACTIVE = (BUILDING, WRITING, VERIFYING)
#: States in which a job holds its instances for good.
FINISHED = (DONE, CANCELLED)

#: (state, event) -> next state.  Anything else raises :class:`InvalidTransition`.
TRANSITIONS: dict[tuple[str, str], str] = {
    (COLLECTING, "close"): READY,
    (COLLECTING, "cancel"): CANCELLED,
    (READY, "start"): BUILDING,
    (READY, "fail"): FAILED,
    (READY, "cancel"): CANCELLED,
    (BUILDING, "built"): WRITING,
    (BUILDING, "wait"): READY,
    (BUILDING, "fail"): FAILED,
    (BUILDING, "cancel"): CANCELLED,
    (WRITING, "written"): VERIFYING,
    (WRITING, "wait"): READY,
    (WRITING, "fail"): FAILED,
    (WRITING, "cancel"): CANCELLED,
    (VERIFYING, "verified"): DONE,
    (VERIFYING, "next"): READY,
    (VERIFYING, "wait"): READY,
    (VERIFYING, "fail"): FAILED,
    (VERIFYING, "cancel"): CANCELLED,
    (FAILED, "retry"): READY,
    (FAILED, "cancel"): CANCELLED,
    (CANCELLED, "retry"): READY,
    (DONE, "retry"): READY,
}

#: Volume states, in order: each is a point a restarted job resumes from.
VOLUME_STATES = ("planned", "built", "written", "verified")

MIGRATIONS = [
    Migration("media-jobs-1", """
        CREATE TABLE media_jobs (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            error TEXT,
            progress REAL NOT NULL DEFAULT 0,
            group_kind TEXT NOT NULL,
            group_key TEXT NOT NULL,
            patient_id TEXT NOT NULL DEFAULT '',
            patient_name TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            instances INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            last_instance_at REAL,
            closed_at REAL,
            started_at REAL,
            finished_at REAL,
            purged_at REAL,
            volume INTEGER NOT NULL DEFAULT 0,
            volumes INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            auto_retry INTEGER NOT NULL DEFAULT 0,
            medium_generation INTEGER NOT NULL DEFAULT 0,
            burn_requested INTEGER NOT NULL DEFAULT 0,
            medium_refused INTEGER NOT NULL DEFAULT 0,
            note TEXT,
            detail TEXT,
            writer TEXT NOT NULL DEFAULT '',
            profile TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX media_jobs_state ON media_jobs(state, created_at);
        CREATE INDEX media_jobs_group ON media_jobs(group_key, state);
        CREATE TABLE media_job_instances (
            job_id TEXT NOT NULL REFERENCES media_jobs(id) ON DELETE CASCADE,
            instance_id INTEGER NOT NULL,
            path TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL,
            series_instance_uid TEXT NOT NULL,
            patient_id TEXT NOT NULL DEFAULT '',
            transfer_syntax_uid TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            added_at REAL NOT NULL,
            volume INTEGER,
            PRIMARY KEY (job_id, instance_id)
        );
        CREATE INDEX media_job_instances_instance ON media_job_instances(instance_id);
        CREATE TABLE media_volumes (
            job_id TEXT NOT NULL REFERENCES media_jobs(id) ON DELETE CASCADE,
            volume INTEGER NOT NULL,
            state TEXT NOT NULL,
            instances INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            profile TEXT NOT NULL DEFAULT '',
            image_bytes INTEGER NOT NULL DEFAULT 0,
            image_sha256 TEXT NOT NULL DEFAULT '',
            medium TEXT NOT NULL DEFAULT '',
            built_at REAL,
            written_at REAL,
            verified_at REAL,
            PRIMARY KEY (job_id, volume)
        );
        CREATE TABLE media_files (
            job_id TEXT NOT NULL,
            volume INTEGER NOT NULL,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (job_id, volume, path),
            FOREIGN KEY (job_id, volume) REFERENCES media_volumes(job_id, volume)
                ON DELETE CASCADE
        );
        CREATE TABLE media_log (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES media_jobs(id) ON DELETE CASCADE,
            at REAL NOT NULL,
            state TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX media_log_job ON media_log(job_id, id);
        CREATE TABLE media_commands (
            id INTEGER PRIMARY KEY,
            command TEXT NOT NULL,
            job_id TEXT,
            created_at REAL NOT NULL,
            handled_at REAL,
            result TEXT
        );
        CREATE INDEX media_commands_pending ON media_commands(handled_at, id);
        CREATE TABLE media_sequence (
            day TEXT PRIMARY KEY,
            last INTEGER NOT NULL
        )
    """),
    # A job's (or volume's) instances in their order straight from an index:
    # read in batches, without SQLite sorting the whole job (a sort that
    # outgrows its cache spills into /var/tmp, a tmpfs on the appliance).
    Migration("media-jobs-2", """
        CREATE INDEX media_job_instances_order ON media_job_instances(
            job_id, study_instance_uid, series_instance_uid, instance_id)
    """),
]

#: Rows read in one query when a job's instances or a volume's files are walked:
#: each batch is a short read, so nothing holds the whole job, and a long step
#: does not keep one snapshot of the index open all along.
BATCH = 256

#: Commands the service executes from ``media_commands``.
COMMANDS = ("burn", "cancel", "eject", "retry", "delete", "fetch", "fetch-cancel")


class InvalidTransition(ValueError):
    """A job cannot go from its state with this event."""

    def __init__(self, job_id: str, state: str, event: str):
        self.job_id, self.state, self.event = job_id, state, event
        super().__init__(f"job {job_id} is {state}: cannot {event} it")


class UnknownJob(KeyError):
    """No job has this id."""

    def __str__(self) -> str:
        return f"no media job {self.args[0]}"


def next_state(state: str, event: str, job_id: str = "?") -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(job_id, state, event) from None


@dataclass(frozen=True)
class Group:
    """What a received instance is collected with: kind and key."""

    kind: str
    key: str

    @classmethod
    def of(cls, grouping: str, info, association: str = "") -> Group:
        if grouping == "patient":
            who = info.patient_id or info.patient_name or "(no patient id)"
            return cls("patient", f"patient:{who}")
        if grouping == "association":
            return cls("association", f"association:{association}")
        return cls("study", f"study:{info.study_instance_uid}")


def fileset_id(job_id: str) -> str:
    """The File-set ID (CS, at most 16 characters) of a job's media."""
    return job_id.replace("-", "_")[:16]


def volume_id(job_id: str, volume: int, volumes: int) -> str:
    """The ISO 9660 volume identifier (d-characters, at most 32)."""
    return f"{fileset_id(job_id)}_{volume}OF{volumes}"[:32]


class JobStore:
    """The job tables of one media store: every change is one transaction."""

    def __init__(self, db: Database, media_root: Path):
        self.db = db
        self.root = Path(media_root)

    # -- collecting --------------------------------------------------------------

    def add_instance(self, conn, instance_id: int, info, group: Group,
                     now: float | None = None) -> str:
        """Put a just-stored instance into the collecting job of its group.

        Runs inside the store's commit transaction (``conn``), so the
        instance is acknowledged only once it belongs to a job.  When the
        instance replaced an earlier copy, every other job holding that copy
        keeps it through a hard link: the store removes the old file after
        this transaction.
        """
        now = now or time.time()
        row = conn.execute(
            "SELECT id FROM media_jobs WHERE group_key = ? AND state = ? "
            "ORDER BY created_at DESC LIMIT 1", (group.key, COLLECTING)).fetchone()
        if row is None:
            job_id = self._new_id(conn, now)
            conn.execute(
                "INSERT INTO media_jobs (id, state, created_at, updated_at, group_kind, "
                "group_key, patient_id, patient_name, description, last_instance_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, COLLECTING, now, now, group.kind, group.key, info.patient_id,
                 info.patient_name, _description(info), now))
            self._log(conn, job_id, COLLECTING, f"collecting ({group.kind})", now)
        else:
            job_id = row["id"]
        path = f"spool/{info.path}"
        for other in conn.execute(
                "SELECT job_id, path FROM media_job_instances WHERE instance_id = ? "
                "AND job_id != ? AND path LIKE 'spool/%'", (instance_id, job_id)).fetchall():
            if other["path"] != path:
                kept = self._keep(other["job_id"], other["path"])
                conn.execute("UPDATE media_job_instances SET path = ? WHERE job_id = ? "
                             "AND instance_id = ?", (kept, other["job_id"], instance_id))
        before = conn.execute("SELECT size FROM media_job_instances WHERE job_id = ? AND "
                              "instance_id = ?", (job_id, instance_id)).fetchone()
        conn.execute(
            "INSERT INTO media_job_instances (job_id, instance_id, path, sop_instance_uid, "
            "sop_class_uid, study_instance_uid, series_instance_uid, patient_id, "
            "transfer_syntax_uid, size, sha256, added_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id, instance_id) DO UPDATE SET path = excluded.path, "
            "sop_class_uid = excluded.sop_class_uid, "
            "study_instance_uid = excluded.study_instance_uid, "
            "series_instance_uid = excluded.series_instance_uid, "
            "patient_id = excluded.patient_id, "
            "transfer_syntax_uid = excluded.transfer_syntax_uid, size = excluded.size, "
            "sha256 = excluded.sha256, added_at = excluded.added_at",
            (job_id, instance_id, path, info.sop_instance_uid, info.sop_class_uid,
             info.study_instance_uid, info.series_instance_uid, info.patient_id,
             info.transfer_syntax_uid, info.size, info.sha256, now))
        # Counted as they come (a count over the job would cost more per
        # instance as the job grows).
        conn.execute(
            "UPDATE media_jobs SET instances = instances + ?, bytes = bytes + ?, "
            "last_instance_at = ?, updated_at = ? WHERE id = ?",
            (before is None, info.size - (before["size"] if before else 0), now, now, job_id))
        return job_id

    def _keep(self, job_id: str, rel: str) -> str:
        """Hard-link ``rel`` into the job's own folder; return the new relative path."""
        keep_dir = self.root / "jobs" / job_id / "keep"
        makedirs_durable(keep_dir)
        name = Path(rel).name
        target = keep_dir / name
        if not target.exists():
            os.link(self.root / rel, target)
            fsync_dir(keep_dir)
        return f"jobs/{job_id}/keep/{name}"

    @staticmethod
    def _new_id(conn, now: float) -> str:
        day = time.strftime("%y%m%d", time.localtime(now))
        row = conn.execute("SELECT last FROM media_sequence WHERE day = ?", (day,)).fetchone()
        n = (row["last"] if row else 0) + 1
        conn.execute("INSERT INTO media_sequence VALUES (?, ?) ON CONFLICT(day) DO UPDATE "
                     "SET last = excluded.last", (day, n))
        return f"{day}-{n:04d}"

    def close_idle(self, idle_seconds: float, now: float | None = None,
                   hold_studies: Sequence[str] = ()) -> list[str]:
        """Close every collecting job that received nothing for ``idle_seconds``,
        except those holding an instance of ``hold_studies`` (studies being
        retrieved)."""
        now = now or time.time()
        rows = self.db.query("SELECT id FROM media_jobs WHERE state = ? AND "
                             "last_instance_at <= ?" + _not_holding(hold_studies),
                             (COLLECTING, now - idle_seconds, *hold_studies))
        closed = []
        for r in rows:
            if self.close(r["id"], "nothing received for "
                          f"{idle_seconds:g} s", now=now, only_if=COLLECTING):
                closed.append(r["id"])
        return closed

    def close_group(self, group_key: str, why: str,
                    hold_studies: Sequence[str] = ()) -> list[str]:
        rows = self.db.query("SELECT id FROM media_jobs WHERE state = ? AND group_key = ?"
                             + _not_holding(hold_studies),
                             (COLLECTING, group_key, *hold_studies))
        return [r["id"] for r in rows if self.close(r["id"], why, only_if=COLLECTING)]

    def close(self, job_id: str, why: str, now: float | None = None,
              only_if: str | None = None) -> bool:
        now = now or time.time()
        with self.db.write() as conn:
            job = conn.execute("SELECT state FROM media_jobs WHERE id = ?",
                               (job_id,)).fetchone()
            if job is None or (only_if and job["state"] != only_if):
                return False
            self._transition(conn, job_id, job["state"], "close", f"closed: {why}", now,
                             closed_at=now)
        return True

    # -- state machine -------------------------------------------------------------

    def transition(self, job_id: str, event: str, message: str = "", **columns) -> str:
        """Apply ``event`` to the job (and set ``columns``); return the new state."""
        with self.db.write() as conn:
            row = conn.execute("SELECT state FROM media_jobs WHERE id = ?",
                               (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            return self._transition(conn, job_id, row["state"], event, message, time.time(),
                                    **columns)

    def _transition(self, conn, job_id: str, state: str, event: str, message: str,
                    now: float, **columns) -> str:
        new = next_state(state, event, job_id)
        columns = {"state": new, "updated_at": now, **columns}
        sets = ", ".join(f"{k} = ?" for k in columns)
        conn.execute(f"UPDATE media_jobs SET {sets} WHERE id = ?", [*columns.values(), job_id])
        self._log(conn, job_id, new, message or event, now)
        return new

    def update(self, job_id: str, message: str = "", **columns) -> None:
        """Set columns without changing the state (logging ``message`` if given)."""
        now = time.time()
        columns = {"updated_at": now, **columns}
        sets = ", ".join(f"{k} = ?" for k in columns)
        with self.db.write() as conn:
            conn.execute(f"UPDATE media_jobs SET {sets} WHERE id = ?",
                         [*columns.values(), job_id])
            if message:
                state = conn.execute("SELECT state FROM media_jobs WHERE id = ?",
                                     (job_id,)).fetchone()
                if state is not None:
                    self._log(conn, job_id, state["state"], message, now)

    def set_progress(self, job_id: str, progress: float, detail: dict) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE media_jobs SET progress = ?, detail = ?, updated_at = ? "
                         "WHERE id = ?", (max(0.0, min(1.0, progress)), json.dumps(detail),
                                          time.time(), job_id))

    @staticmethod
    def _log(conn, job_id: str, state: str, message: str, now: float) -> None:
        conn.execute("INSERT INTO media_log (job_id, at, state, message) VALUES (?, ?, ?, ?)",
                     (job_id, now, state, message))

    # -- reading -------------------------------------------------------------------

    def job(self, job_id: str) -> dict:
        row = self.db.query_one("SELECT * FROM media_jobs WHERE id = ?", (job_id,))
        if row is None:
            raise UnknownJob(job_id)
        return dict(row)

    def jobs(self, states: Iterable[str] | None = None) -> list[dict]:
        if states is None:
            rows = self.db.query("SELECT * FROM media_jobs ORDER BY created_at, id")
        else:
            states = list(states)
            marks = ", ".join("?" for _ in states)
            rows = self.db.query(f"SELECT * FROM media_jobs WHERE state IN ({marks}) "
                                 "ORDER BY created_at, id", states)
        return [dict(r) for r in rows]

    def instances(self, job_id: str, volume: int | None = None) -> list[dict]:
        return [dict(r) for r in self.iter_instances(job_id, volume)]

    def iter_instances(self, job_id: str, volume: int | None = None) -> Iterator[sqlite3.Row]:
        """The job's instances row by row (by study, series and id), for a caller that
        keeps only a few columns (a job of 10 000 instances as a list of dicts takes
        some 13 MB).  Read :data:`BATCH` rows at a time."""
        where = "job_id = ?"
        params: list = [job_id]
        if volume is not None:
            where += " AND volume = ?"
            params.append(volume)
        order = "study_instance_uid, series_instance_uid, instance_id"
        after: list = []
        while True:
            rows = self.db.read_conn().execute(
                f"SELECT * FROM media_job_instances WHERE {where}"
                + (f" AND ({order}) > (?, ?, ?)" if after else "")
                + f" ORDER BY {order} LIMIT ?", [*params, *after, BATCH]).fetchall()
            yield from rows
            if len(rows) < BATCH:
                return
            last = rows[-1]
            after = [last["study_instance_uid"], last["series_instance_uid"],
                     last["instance_id"]]

    def iter_series(self, job_id: str, patient_id: str, study_instance_uid: str,
                    series_instance_uid: str) -> Iterator[sqlite3.Row]:
        """The job's instances of one patient's series, by id (the order of
        :meth:`iter_instances`), :data:`BATCH` rows at a time."""
        after = -(1 << 63)
        while True:
            rows = self.db.read_conn().execute(
                "SELECT * FROM media_job_instances WHERE job_id = ? AND study_instance_uid = ? "
                "AND series_instance_uid = ? AND instance_id > ? AND patient_id = ? "
                "ORDER BY instance_id LIMIT ?",
                (job_id, study_instance_uid, series_instance_uid, after, patient_id,
                 BATCH)).fetchall()
            yield from rows
            if len(rows) < BATCH:
                return
            after = rows[-1]["instance_id"]

    def count_instances(self, job_id: str, volume: int | None = None) -> int:
        sql = "SELECT COUNT(*) FROM media_job_instances WHERE job_id = ?"
        params: list = [job_id]
        if volume is not None:
            sql += " AND volume = ?"
            params.append(volume)
        return self.db.read_conn().execute(sql, params).fetchone()[0]

    def instance_ids(self, job_id: str, volume: int | None = None) -> list[int]:
        """The ids of :meth:`iter_instances`' rows, in the same order."""
        sql = "SELECT instance_id FROM media_job_instances WHERE job_id = ?"
        params: list = [job_id]
        if volume is not None:
            sql += " AND volume = ?"
            params.append(volume)
        sql += " ORDER BY study_instance_uid, series_instance_uid, instance_id"
        return [r[0] for r in self.db.read_conn().execute(sql, params)]

    def instance(self, job_id: str, instance_id: int) -> sqlite3.Row | None:
        return self.db.read_conn().execute(
            "SELECT * FROM media_job_instances WHERE job_id = ? AND instance_id = ?",
            (job_id, instance_id)).fetchone()

    def summary(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for r in self.db.query("SELECT state, COUNT(*) AS n FROM media_jobs GROUP BY state"):
            counts[r["state"]] = r["n"]
        return counts

    def log(self, job_id: str) -> list[dict]:
        return [dict(r) for r in self.db.query(
            "SELECT at, state, message FROM media_log WHERE job_id = ? ORDER BY id",
            (job_id,))]

    # -- volumes ---------------------------------------------------------------------

    def plan(self, job_id: str, volumes: list[list], *, profile: str = "",
             writer: str = "") -> int:
        """Record which instances go on which volume; return how many were planned.

        Each volume is a list of instance ids, or of selections (tuples like
        :class:`.span.Run`: patient ID, study, series, first and last
        instance id) that stand for many instances at once: every instance of
        the patient's study (series None), of one of its series (first None),
        or of a run of that series from instance id ``first`` to ``last``;
        ``(None, None)``: every instance of the job.
        """
        total = 0
        with self.db.write() as conn:
            conn.execute("DELETE FROM media_volumes WHERE job_id = ?", (job_id,))
            conn.execute("UPDATE media_job_instances SET volume = NULL WHERE job_id = ?",
                         (job_id,))
            for n, selections in enumerate(volumes, 1):
                ids = [i for i in selections if isinstance(i, int)]
                conn.executemany("UPDATE media_job_instances SET volume = ? WHERE job_id = ? "
                                 "AND instance_id = ?", [(n, job_id, i) for i in ids])
                for selection in selections:
                    if not isinstance(selection, int):
                        where, params = _selection(selection)
                        conn.execute(f"UPDATE media_job_instances SET volume = ? WHERE "
                                     f"job_id = ?{where}", [n, job_id, *params])
                count, size = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM media_job_instances "
                    "WHERE job_id = ? AND volume = ?", (job_id, n)).fetchone()
                total += count
                conn.execute("INSERT INTO media_volumes (job_id, volume, state, instances, "
                             "bytes, profile) VALUES (?, ?, 'planned', ?, ?, ?)",
                             (job_id, n, count, size, profile))
            conn.execute("UPDATE media_jobs SET volumes = ?, volume = 1, attempts = 0, "
                         "profile = ?, writer = ?, updated_at = ? WHERE id = ?",
                         (len(volumes), profile, writer, time.time(), job_id))
            state = conn.execute("SELECT state FROM media_jobs WHERE id = ?",
                                 (job_id,)).fetchone()
            self._log(conn, job_id, state["state"] if state else READY,
                      f"planned {len(volumes)} volume(s), profile {profile or '-'}",
                      time.time())
        return total

    def volume(self, job_id: str, volume: int) -> dict | None:
        row = self.db.query_one("SELECT * FROM media_volumes WHERE job_id = ? AND volume = ?",
                                (job_id, volume))
        return dict(row) if row else None

    def volumes(self, job_id: str) -> list[dict]:
        return [dict(r) for r in self.db.query(
            "SELECT * FROM media_volumes WHERE job_id = ? ORDER BY volume", (job_id,))]

    def set_volume(self, job_id: str, volume: int, state: str, files=None, **columns) -> None:
        """Move a volume to ``state``; ``files`` (relpath, sha256, size) are its
        built file list (replacing any earlier one; see also :meth:`manifest_writer`)."""
        if state not in VOLUME_STATES:
            raise ValueError(f"unknown volume state {state!r}")
        columns = {"state": state, **columns}
        sets = ", ".join(f"{k} = ?" for k in columns)
        with self.db.write() as conn:
            conn.execute(f"UPDATE media_volumes SET {sets} WHERE job_id = ? AND volume = ?",
                         [*columns.values(), job_id, volume])
            if files is not None:
                conn.execute("DELETE FROM media_files WHERE job_id = ? AND volume = ?",
                             (job_id, volume))
                conn.executemany("INSERT INTO media_files VALUES (?, ?, ?, ?, ?)",
                                 ((job_id, volume, str(p), h, s) for p, h, s in files))

    def files(self, job_id: str, volume: int) -> list[tuple[str, str, int]]:
        return list(self.manifest(job_id, volume))

    def manifest(self, job_id: str, volume: int) -> Manifest:
        """The files of a built volume, read from the index whenever they are walked."""
        return Manifest(self.db, job_id, volume)

    def manifest_writer(self, job_id: str, volume: int) -> ManifestWriter:
        """Where a volume's files go while its file-set is built (see :class:`ManifestWriter`)."""
        return ManifestWriter(self.db, job_id, volume)

    def reset_volumes(self, job_id: str) -> None:
        """Forget the plan (a retried job is planned again for its new medium)."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM media_volumes WHERE job_id = ?", (job_id,))
            conn.execute("UPDATE media_job_instances SET volume = NULL WHERE job_id = ?",
                         (job_id,))
            conn.execute("UPDATE media_jobs SET volume = 0, volumes = 0 WHERE id = ?",
                         (job_id,))

    # -- removing ------------------------------------------------------------------------

    def release(self, job_id: str, delete_job: bool) -> Released:
        """Drop the job's hold on its instances (and the job row if ``delete_job``).

        Instances no other job holds leave the index; the returned files
        (spool files and the job's folder) are to be removed by the caller
        after this committed.  They are listed in a scratch file of the
        store's ``tmp/`` folder, not in memory (a job of 100 000 instances
        would take some 40 MB as a list), and read back as they are iterated.
        """
        spill = scratch.open_db(self.root / "tmp", ".release-")
        try:
            spill.execute("CREATE TABLE released (id INTEGER NOT NULL, path TEXT NOT NULL)")
            with self.db.write() as conn:
                if conn.execute("SELECT 1 FROM media_jobs WHERE id = ?",
                                (job_id,)).fetchone() is None:
                    raise UnknownJob(job_id)
                cursor = conn.execute(
                    "SELECT m.instance_id, i.path FROM media_job_instances m "
                    "JOIN instances i ON i.id = m.instance_id WHERE m.job_id = ? "
                    "AND NOT EXISTS (SELECT 1 FROM media_job_instances o "
                    "WHERE o.instance_id = m.instance_id AND o.job_id != ?)", (job_id, job_id))
                while rows := cursor.fetchmany(BATCH):
                    spill.executemany("INSERT INTO released VALUES (?, ?)", rows)
                for rows in _batches(spill.execute("SELECT id FROM released ORDER BY rowid")):
                    conn.executemany("DELETE FROM instances WHERE id = ?", rows)
                conn.execute("DELETE FROM media_job_instances WHERE job_id = ?", (job_id,))
                if delete_job:
                    conn.execute("DELETE FROM media_jobs WHERE id = ?", (job_id,))
                else:
                    conn.execute("UPDATE media_jobs SET purged_at = ?, updated_at = ? "
                                 "WHERE id = ?", (time.time(), time.time(), job_id))
        except BaseException:
            scratch.close(spill)
            raise
        return Released(spill, self.root / "spool", self.root / "jobs" / job_id)

    def expired(self, keep_seconds: float, now: float | None = None) -> list[str]:
        """Finished jobs whose instances have been kept long enough."""
        now = now or time.time()
        return [r["id"] for r in self.db.query(
            "SELECT id FROM media_jobs WHERE state IN (?, ?) AND purged_at IS NULL "
            "AND COALESCE(finished_at, updated_at) <= ?", (*FINISHED, now - keep_seconds))]

    # -- commands ----------------------------------------------------------------------------

    def add_command(self, command: str, job_id: str | None = None) -> int:
        if command not in COMMANDS:
            raise ValueError(f"unknown media command {command!r}")
        with self.db.write() as conn:
            cur = conn.execute("INSERT INTO media_commands (command, job_id, created_at) "
                               "VALUES (?, ?, ?)", (command, job_id, time.time()))
            return cur.lastrowid

    def pending_commands(self) -> list[dict]:
        return [dict(r) for r in self.db.query(
            "SELECT * FROM media_commands WHERE handled_at IS NULL ORDER BY id")]

    def finish_command(self, command_id: int, result: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE media_commands SET handled_at = ?, result = ? WHERE id = ? "
                         "AND handled_at IS NULL", (time.time(), result, command_id))


def _not_holding(studies: Sequence[str]) -> str:
    """SQL (on ``media_jobs``): the job holds no instance of ``studies``."""
    if not studies:
        return ""
    return (" AND NOT EXISTS (SELECT 1 FROM media_job_instances i WHERE "
            "i.job_id = media_jobs.id AND i.study_instance_uid IN "
            f"({', '.join('?' for _ in studies)}))")


def _selection(selection) -> tuple[str, list]:
    """The WHERE clause (after ``job_id = ?``) of a selection of :meth:`JobStore.plan`."""
    patient, study, *rest = selection
    series, first, last = (list(rest) + [None, None, None])[:3]
    if patient is None and study is None:
        return "", []
    where, params = " AND patient_id = ? AND study_instance_uid = ?", [patient, study]
    if series is not None:
        where += " AND series_instance_uid = ?"
        params.append(series)
        if first is not None:
            where += " AND instance_id BETWEEN ? AND ?"
            params += [first, last]
    return where, params


class Manifest:
    """The files (relative path, SHA-256, size) of a built volume, in path order.

    Iterable as often as needed; each walk reads the index :data:`BATCH`
    rows at a time, so verifying a volume of any size holds a batch, not
    the volume's list.
    """

    def __init__(self, db: Database, job_id: str, volume: int):
        self.db = db
        self.job_id = job_id
        self.volume = volume

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        after = None
        while True:
            rows = self.db.read_conn().execute(
                "SELECT path, sha256, size FROM media_files WHERE job_id = ? AND volume = ?"
                + (" AND path > ?" if after is not None else "") + " ORDER BY path LIMIT ?",
                [self.job_id, self.volume, *([after] if after is not None else []),
                 BATCH]).fetchall()
            for r in rows:
                yield r[0], r[1], r[2]
            if len(rows) < BATCH:
                return
            after = rows[-1][0]

    def __len__(self) -> int:
        return self.db.read_conn().execute(
            "SELECT COUNT(*) FROM media_files WHERE job_id = ? AND volume = ?",
            (self.job_id, self.volume)).fetchone()[0]


class ManifestWriter:
    """A volume's files, written into the index as the file-set builder places them.

    Opening it forgets the volume's earlier list; :meth:`add` takes one line
    at a time and commits every :data:`BATCH` lines, without a sync of their
    own (a lost batch is harmless: the list counts only once the volume is
    ``built``, and that commit is durable, which makes every earlier one
    durable too).  A build that stops half-way leaves a partial list behind
    a volume that is still ``planned``; the next build starts it again.
    """

    def __init__(self, db: Database, job_id: str, volume: int):
        self.db = db
        self.job_id = job_id
        self.volume = volume
        self._lines: list[tuple] = []
        self.count = 0
        with db.write(durable=False) as conn:
            conn.execute("DELETE FROM media_files WHERE job_id = ? AND volume = ?",
                         (job_id, volume))

    def add(self, path: str, sha256: str, size: int) -> None:
        self._lines.append((self.job_id, self.volume, path, sha256, size))
        self.count += 1
        if len(self._lines) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            with self.db.write(durable=False) as conn:
                conn.executemany("INSERT INTO media_files VALUES (?, ?, ?, ?, ?)", self._lines)
            self._lines.clear()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.flush()


def _batches(cursor) -> Iterator[list]:
    while rows := cursor.fetchmany(BATCH):
        yield rows


class Released:
    """The files a :meth:`JobStore.release` leaves to remove: the spool files that no
    job holds any more, then the job's own folder.

    Read from the release's scratch file as they are iterated (once); the
    file goes when the iteration ends or the object is closed or dropped.
    """

    def __init__(self, spill, spool: Path, folder: Path):
        self._spill = spill
        self._spool = spool
        self._folder = folder

    def __iter__(self) -> Iterator[Path]:
        if self._spill is None:
            return
        try:
            for rows in _batches(self._spill.execute("SELECT path FROM released "
                                                     "ORDER BY rowid")):
                for (path,) in rows:
                    yield self._spool / path
            yield self._folder
        finally:
            self.close()

    def close(self) -> None:
        if self._spill is not None:
            scratch.close(self._spill)
            self._spill = None

    def __del__(self) -> None:
        self.close()


def _description(info) -> str:
    parts = [p for p in (info.modality, info.study_description or info.study_date) if p]
    return " ".join(parts)
