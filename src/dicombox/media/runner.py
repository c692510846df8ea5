"""The job runner: closes idle jobs, finds a medium, and runs one job at a time.

:class:`JobRunner` is the media service's scheduler thread.  About twice a
second it executes the commands in ``media_commands``, closes jobs that have
been idle long enough, publishes the service state, and when no job runs
starts the next one in its own :class:`Execution` thread:

1. a job caught in ``building``/``writing``/``verifying`` by a stop or a
   crash resumes from its last completed volume step;
2. else the oldest ``ready`` job (when ``auto_burn`` or a burn was
   requested) once a usable medium is present;
3. else a ``failed`` job marked for automatic retry once a *freshly*
   inserted medium is present.

Whether a medium is present comes from udev when udev reports the drive
(a change event with a blank disc, a USB partition appearing), otherwise
from probing the writer every ``probe_seconds``.  Each insertion of a usable
medium increments a generation number; a job that failed on a medium
remembers its generation and is retried only on a newer one.  A udev
"remove" of the medium a job is writing cancels the write at once.

Failure policy: a job's failure is a job state (``failed`` with a message),
never the service's; an unexpected exception inside a job is logged with its
traceback and fails that job ("internal error").  A dead runner thread makes
the service unhealthy (watchdog restart), and everything resumes from disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .. import memory
from ..lifecycle import Worker
from ..store.fsutil import fsync_dir
from . import jobs as J
from . import retrieve
from .errors import MediaError
from .jobs import JobStore
from .udev import MediumEvent
from .verify import remove_tree, walk_tree

LOGGER = logging.getLogger("dicombox.media.runner")

#: Seconds between two writes of a job's progress.
PROGRESS_INTERVAL = 0.5
#: Seconds between two publications of the service state.
PUBLISH_INTERVAL = 2.0
#: Seconds no job starts after one ended with an unexpected error (no busy loop).
ERROR_PAUSE = 10.0
#: Temporary files older than this belong to associations that died mid-transfer.
STALE_TMP_SECONDS = 3600

#: MediaError kinds that mean "this medium cannot be used; try another": the job
#: waits (``ready``) with the message as its error, no attempt is counted.
WAIT_KINDS = ("no-drive", "no-medium", "not-blank", "too-small")
#: MediaError kinds that spoil the medium: the job fails, counting an attempt.
MEDIUM_KINDS = ("write-failed", "verify-failed", "removed")

#: Share of a volume's progress taken by each step.
STEP_WEIGHTS = {"building": (0.0, 0.3), "writing": (0.3, 0.5), "verifying": (0.8, 0.2)}


class JobInterrupted(Exception):
    """The running step was stopped: cancelled, medium removed, or service stopping."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class MediumStatus:
    """What the runner knows about the medium of the configured writer."""

    usable: bool = False
    #: Why no job can start, when that needs the operator ("closed disc", "no drive").
    problem: str | None = None
    #: Why jobs wait when nothing is wrong ("insert a blank disc").
    note: str | None = None
    description: str = ""
    media_type: str = ""
    capacity_bytes: int = 0
    free_bytes: int = 0
    #: Incremented on every insertion of a usable medium.
    generation: int = 0
    #: The udev node of the medium in use (its removal interrupts a write).
    node: str = ""
    source: str = ""
    checked_at: float = 0.0
    #: A job used the medium since it was last checked.
    stale: bool = False
    #: The writer's last answer (a ``writers.MediumInfo``), when it was probed.
    info: object = None

    def as_dict(self) -> dict:
        if self.stale:
            return {"usable": False, "problem": None, "note": "not checked since the last job",
                    "description": "", "media_type": self.media_type, "capacity_bytes": 0,
                    "free_bytes": 0, "generation": self.generation, "source": self.source}
        return {"usable": self.usable, "problem": self.problem, "note": self.note,
                "description": self.description, "media_type": self.media_type,
                "capacity_bytes": self.capacity_bytes, "free_bytes": self.free_bytes,
                "generation": self.generation, "source": self.source}


@dataclass
class Execution:
    """One job running in its own thread, with its cancel flag."""

    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    node: str = ""
    thread: threading.Thread | None = None

    def interrupt(self, reason: str) -> None:
        if not self.cancel.is_set():
            self.reason = reason
            self.cancel.set()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Progress:
    """Progress callback for one step: percent, rate and ETA into the job row.

    Raises :class:`JobInterrupted` when the job's cancel flag is set, which
    is how a build step (that has no cancel parameter) is stopped.
    """

    def __init__(self, jobs: JobStore, job: dict, step: str, execution: Execution):
        self.jobs = jobs
        self.job_id = job["id"]
        self.volume = max(1, job["volume"])
        self.volumes = max(1, job["volumes"])
        self.step = step
        self.base, self.weight = STEP_WEIGHTS[step]
        self.execution = execution
        self.started = time.monotonic()
        self._last_write = 0.0
        self.done = 0
        self.total = 0
        self.write(0, 0, force=True)

    def __call__(self, done: int, total: int) -> None:
        if self.execution.cancel.is_set():
            raise JobInterrupted(self.execution.reason)
        self.write(done, total)

    def write(self, done: int, total: int, force: bool = False) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_INTERVAL and done < total:
            return
        self._last_write = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed if done else 0.0
        eta = (total - done) / rate if rate > 0 and total >= done else None
        fraction = done / total if total else 0.0
        overall = ((self.volume - 1) + self.base + self.weight * fraction) / self.volumes
        self.jobs.set_progress(self.job_id, overall, {
            "step": self.step, "volume": self.volume, "volumes": self.volumes,
            "done_bytes": done, "total_bytes": total, "percent": round(100 * fraction, 1),
            "rate_bytes_per_s": round(rate), "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": round(elapsed, 1)})


def library():
    """The media pipeline library (file-set, spanning, ISO, writers)."""
    from . import fileset, iso, span, writers
    return fileset, span, iso, writers


def profiles():
    from . import profiles as p
    return p


class JobSources(Sequence):
    """A volume's instances for the media library, read from the job store on demand.

    Holding a job's instances as objects costs about 1 kB each (10 MB for a
    job of 10 000 images).  Here nothing is held per instance: the file-set
    builder walks them once, read from the index in batches
    (:meth:`JobStore.iter_instances`), and asks for each one again when it
    copies its file (:meth:`current`: its row as it is then).  Random access
    by position (``sources[i]``) reads the volume's row ids on first use.
    """

    def __init__(self, jobs: JobStore, job_id: str, volume: int | None, make):
        self.jobs = jobs
        self.job_id = job_id
        self.volume = volume
        self._make = make
        self._count = jobs.count_instances(job_id, volume)
        self._ids: array | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        shared: dict[str, str] = {}
        for row in self.jobs.iter_instances(self.job_id, self.volume):
            yield self._make(row, shared)

    def _row(self, instance_id: int):
        row = self.jobs.instance(self.job_id, instance_id)
        if row is None:
            raise MediaError("source-changed", f"instance {instance_id} left job {self.job_id}")
        return self._make(row, {})

    def current(self, source):
        """``source`` (one of these instances) as the job store holds it now."""
        return self._row(source.key)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._ids is None:
            self._ids = array("q", self.jobs.instance_ids(self.job_id, self.volume))
        return self._row(self._ids[index])


class JobRunner(Worker):
    """The media service's scheduler (see the module docstring)."""

    def __init__(self, config, jobs: JobStore, root: Path, publish=None, watcher=None,
                 interval: float = 0.5):
        super().__init__("media-runner")
        self.config = config
        self.media = config.media
        self.jobs = jobs
        self.root = Path(root)
        self.publish = publish
        self.watcher = watcher
        self.interval = interval
        # Generations go on from the last one a job remembers, so that a job that
        # failed on a medium before a restart is retried on the next insertion.
        last = jobs.db.query_one("SELECT COALESCE(MAX(medium_generation), 0) AS g "
                                 "FROM media_jobs")
        self.medium = MediumStatus(generation=last["g"] if last else 0)
        self.execution: Execution | None = None
        self._lock = threading.Lock()
        self._probe_due = 0.0
        self._last_publish = 0.0
        self._last_purge = 0.0
        self._paused_until = 0.0
        self._writer = None
        #: The retrieve queue's thread (set by the service), woken by ``fetch``.
        self.retriever = None

    # -- the writer ------------------------------------------------------------------

    def writer(self):
        """The configured writer (built once)."""
        if self._writer is None:
            *_, writers = library()
            m = self.media
            if m.writer == "optical":
                self._writer = writers.OpticalWriter(m.optical.device, eject=m.optical.eject,
                                                     speed=m.optical.speed,
                                                     overwrite=m.optical.overwrite)
            elif m.writer == "usb" and m.usb.image is not None:
                self._writer = writers.UsbWriter(image=m.usb.image)
            elif m.writer == "usb":
                self._writer = writers.UsbWriter(target=m.usb.mount_point)
            else:
                self._writer = writers.FolderWriter(m.folder.directory)
        return self._writer

    # -- udev ------------------------------------------------------------------------

    def udev_node(self) -> str:
        """The udev node that speaks for the optical drive ("" when none)."""
        return self.media.optical.event_node() if self.media.writer == "optical" else ""

    def udev_gated(self) -> bool:
        """Whether udev, not probing, says when a medium is present."""
        if self.watcher is None:
            return False
        if self.media.writer == "usb":
            return True
        return self.media.writer == "optical" and bool(self.udev_node())

    def on_medium_event(self, event: MediumEvent) -> None:
        """Called by the udev watcher for each real change (its thread)."""
        relevant = (self.media.writer == "usb" and event.kind == "usb") or (
            self.media.writer == "optical" and event.node == self.udev_node())
        if not relevant:
            return
        with self._lock:
            execution = self.execution
        if execution is not None and execution.alive() and not event.present and (
                execution.node in ("", event.node)):
            LOGGER.warning("%s removed while job %s was running", event.node,
                           execution.job_id)
            execution.interrupt("removed")
        self._probe_due = 0.0
        self.wake()

    def _gate(self) -> tuple[bool, str | None, str | None, str]:
        """(may probe, problem, note, node) from udev's view of the medium."""
        if not self.udev_gated():
            return True, None, None, ""
        if self.media.writer == "optical":
            node = self.udev_node()
            event = self.watcher.get(node)
            if event is None:
                return False, f"no drive {node} (udev does not report it)", None, node
            if not event.present:
                return False, None, f"insert a blank disc into {node}", node
            if not event.usable:
                state = "closed" if event.state == "complete" else event.state
                return False, (f"the disc in {node} is {state} ({event.description}): insert "
                               "a blank disc"), None, node
            return True, None, None, node
        sticks = self.watcher.present("usb")
        if not sticks:
            return False, None, "insert a USB stick", ""
        usable = [s for s in sticks if s.usable]
        if not usable:
            return False, (f"{sticks[0].description}: the stick needs a FAT32 or exFAT file "
                           "system"), None, sticks[0].node
        return True, None, None, usable[0].node

    def refresh_medium(self, force: bool = False) -> MediumStatus:
        """Update :attr:`medium` (probing the writer when due); return it.

        The generation counts insertions: it grows when a usable medium
        follows an unusable (or no) one in two successive observations.
        """
        now = time.monotonic()
        if not force and not self.medium.stale and now < self._probe_due:
            return self.medium
        self._probe_due = now + self.media.probe_seconds
        old = self.medium
        may_probe, problem, note, node = self._gate()
        new = MediumStatus(generation=old.generation, node=node,
                           source="udev" if self.udev_gated() else "probe", checked_at=now)
        if not may_probe:
            new.problem, new.note = problem, note
            new.description = problem or note or ""
        else:
            self._probe(new)
        if new.usable and not old.usable:
            new.generation += 1
            LOGGER.info("medium ready: %s", new.description)
        elif not new.usable and (new.problem, new.note) != (old.problem, old.note):
            LOGGER.info("no usable medium: %s", new.problem or new.note)
        self.medium = new
        return new

    def _probe(self, status: MediumStatus) -> None:
        *_, writers = library()
        try:
            info = self.writer().probe()
        except writers.MediaError as exc:
            status.problem = _media_message(exc)
            status.description = status.problem
            return
        state = info.state
        status.info = info
        status.description = info.description or state.name.lower()
        status.media_type = info.media_type
        status.capacity_bytes = info.capacity_bytes or 0
        status.free_bytes = info.free_bytes or 0
        if state == writers.MediumState.BLANK or (
                state == writers.MediumState.APPENDABLE and self.media.writer == "usb"):
            # A stick with other files on it is fine (the file-set goes next to
            # them); a disc must be blank.
            status.usable = True
        elif state == writers.MediumState.NO_MEDIUM:
            status.note = "insert a blank disc" if self.media.writer == "optical" else (
                "insert a USB stick" if self.media.writer == "usb" else "no output folder")
        elif state == writers.MediumState.APPENDABLE:
            status.problem = f"the disc is not blank ({status.description}): insert a blank one"
        elif state == writers.MediumState.CLOSED:
            status.problem = f"the medium cannot take a new file-set ({status.description})"
        else:
            status.problem = f"the medium cannot be used ({status.description})"

    # -- the loop ----------------------------------------------------------------------------

    # -- the loop ----------------------------------------------------------------------------

    def step(self) -> float:
        self.handle_commands()
        self.finish_retrieves()
        self.jobs.close_idle(self.media.idle_seconds,
                             hold_studies=retrieve.held_studies(self.jobs.db))
        self._purge_expired()
        with self._lock:
            running = self.execution is not None and self.execution.alive()
            if not running:
                self.execution = None
        if not running and time.monotonic() >= self._paused_until:
            self._schedule()
        self._publish()
        return self.interval

    def _schedule(self) -> None:
        active = self.jobs.jobs(J.ACTIVE)
        if active:
            self._start(active[0]["id"])
            return
        ready = [j for j in self.jobs.jobs([J.READY])
                 if self.media.auto_burn or j["burn_requested"]]
        retry = [j for j in self.jobs.jobs([J.FAILED])
                 if j["auto_retry"] and j["purged_at"] is None]
        if not ready and not retry:
            return
        medium = self.refresh_medium()
        startable = self._tell_waiting(ready, medium)
        if startable:
            self._start(startable[0]["id"])
            return
        if not medium.usable:
            return
        for job in retry:
            if medium.generation > job["medium_generation"]:
                self.jobs.transition(job["id"], "retry", "retrying on a fresh medium",
                                     error=None, auto_retry=0, finished_at=None)
                self._start(job["id"])
                return

    def _tell_waiting(self, ready: list[dict], medium: MediumStatus) -> list[dict]:
        """Write why waiting jobs wait (only when it changed); return those that may start."""
        startable = []
        for job in ready:
            refused = job["medium_refused"] and medium.generation <= job["medium_generation"]
            if medium.usable and not refused:
                startable.append(job)
                continue
            if refused:
                error = job["error"]
                note = ("insert the next medium" if job["volume"] > 1 and not error
                        else "insert another medium")
            else:
                error, note = medium.problem, medium.note
            if job["volume"] > 1 and note:
                note = f"disc {job['volume']} of {job['volumes']}: {note}"
            if (job["error"], job["note"]) != (error, note):
                self.jobs.update(job["id"], error or "", error=error, note=note)
        return startable

    def _start(self, job_id: str) -> None:
        execution = Execution(job_id, node=self.medium.node)
        thread = threading.Thread(target=self._run_execution, args=(execution,),
                                  name=f"media-job-{job_id}", daemon=True)
        execution.thread = thread
        with self._lock:
            self.execution = execution
        thread.start()

    def _run_execution(self, execution: Execution) -> None:
        *_, writers = library()
        try:
            self.execute(execution)
        except JobInterrupted as exc:
            self._interrupted(execution, exc.reason)
        except writers.MediaError as exc:
            if execution.cancel.is_set():
                self._interrupted(execution, execution.reason)
            else:
                self._media_error(execution.job_id, exc)
        except Exception as exc:  # noqa: BLE001 - last resort: the job fails, not the service
            LOGGER.exception("job %s failed unexpectedly", execution.job_id)
            self._paused_until = time.monotonic() + ERROR_PAUSE
            try:
                self._fail(execution.job_id, f"internal error: {type(exc).__name__}: {exc}",
                           medium=False)
            except Exception:  # noqa: BLE001 - the index itself fails: the pause holds
                LOGGER.exception("cannot record the failure of job %s", execution.job_id)
        finally:
            memory.release()
            self.medium.stale = True
            self._probe_due = 0.0
            self._publish(force=True)
            self.wake()

    # -- commands -------------------------------------------------------------------------

    def handle_commands(self) -> None:
        for cmd in self.jobs.pending_commands():
            try:
                result = self._command(cmd["command"], cmd["job_id"], cmd.get("argument"))
            except (J.UnknownJob, J.InvalidTransition, ValueError) as exc:
                result = f"refused: {exc}"
            LOGGER.info("command %s %s: %s", cmd["command"], cmd["job_id"] or "", result)
            self.jobs.finish_command(cmd["id"], result)

    def running(self) -> Execution | None:
        with self._lock:
            execution = self.execution
        return execution if execution is not None and execution.alive() else None

    def _command(self, command: str, job_id: str | None, argument: str | None = None) -> str:
        if command not in J.COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        if command == "fetch":
            return self._fetch(argument)
        if command == "fetch-cancel":
            return self._fetch_cancel(argument)
        running = self.running()
        if command == "burn":
            return self._burn(job_id)
        if command == "cancel":
            if job_id is None:
                if running is None:
                    return "refused: no job is running"
                job_id = running.job_id
            job = self.jobs.job(job_id)
            if running is not None and running.job_id == job_id:
                running.interrupt("cancelled")
                return f"job {job_id} is being cancelled (was {job['state']})"
            self.jobs.transition(job_id, "cancel", "cancelled by the operator",
                                 finished_at=time.time(), auto_retry=0, burn_requested=0,
                                 note=None)
            return f"job {job_id} cancelled (was {job['state']})"
        if command == "eject":
            if running is not None:
                return f"refused: job {running.job_id} is using the drive"
            if self.media.writer == "folder":
                return "nothing to eject (the writer is a folder)"
            *_, writers = library()
            try:
                self.writer().eject()
            except writers.MediaError as exc:
                return f"refused: {_media_message(exc)}"
            self._probe_due = 0.0
            return "ejected"
        if job_id is None:
            raise ValueError(f"{command} needs a job id")
        if command == "retry":
            job = self.jobs.job(job_id)
            if job["purged_at"] is not None:
                raise ValueError(f"job {job_id}'s instances were already removed")
            if job["state"] == J.DONE:
                self.jobs.reset_volumes(job_id)
            self.jobs.transition(job_id, "retry", "retry requested", error=None, note=None,
                                 auto_retry=0, attempts=0, burn_requested=1, finished_at=None,
                                 medium_refused=0)
            self._probe_due = 0.0
            return f"job {job_id} is ready again"
        if command == "delete":
            job = self.jobs.job(job_id)
            if (running is not None and running.job_id == job_id) or job["state"] in J.ACTIVE:
                raise ValueError(f"job {job_id} is {job['state']}: cancel it first")
            remove_paths(self.jobs.release(job_id, delete_job=True))
            return f"job {job_id} deleted"
        raise ValueError(f"unknown command {command!r}")

    def _burn(self, job_id: str | None) -> str:
        if job_id is None:
            candidates = self.jobs.jobs([J.READY, J.COLLECTING])
            if not candidates:
                return "refused: no job is waiting"
            job = candidates[0]
        else:
            job = self.jobs.job(job_id)
        job_id = job["id"]
        if job["state"] == J.COLLECTING:
            self.jobs.close(job_id, "burn requested", only_if=J.COLLECTING)
        elif job["state"] in (J.FAILED, J.CANCELLED):
            if job["purged_at"] is not None:
                raise ValueError(f"job {job_id}'s instances were already removed")
            self.jobs.transition(job_id, "retry", "burn requested", error=None, note=None,
                                 auto_retry=0, attempts=0, finished_at=None)
        elif job["state"] != J.READY:
            return f"job {job_id} is already {job['state']}"
        self.jobs.update(job_id, "burn requested", burn_requested=1, medium_refused=0)
        self._probe_due = 0.0
        self.wake()
        return f"job {job_id} will start as soon as a usable medium is present"

    # -- retrieves (retrieve.py) ----------------------------------------------------------

    def _fetch(self, argument: str | None) -> str:
        try:
            args = json.loads(argument or "")
            source = str(args["source"])
            study, accession, patient = (str(args.get(k) or "").strip()
                                         for k in ("study", "accession", "patient_id"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"fetch needs a source and a study, not {argument!r}") from None
        if self.media.source(source) is None:
            known = ", ".join(s.name for s in self.media.sources) or "none configured"
            raise ValueError(f"no source {source!r} in media.sources ({known})")
        problem = retrieve.check_request(study, accession, patient)
        if problem:
            raise ValueError(problem)
        with self.jobs.db.write() as conn:
            rid = retrieve.queue(conn, source, study, bool(args.get("burn")), accession,
                                 patient)
        if self.retriever is not None:
            self.retriever.wake()
        what = (f"study {study}" if study else
                f"the studies with Accession Number {accession}" if accession else
                f"the studies of Patient ID {patient}")
        return f"retrieve {rid} queued: {what} from {source}"

    def _fetch_cancel(self, argument: str | None) -> str:
        try:
            rid = int(argument or "")
        except ValueError:
            raise ValueError(f"fetch-cancel needs a retrieve number, not {argument!r}") from None
        row = self.jobs.db.query_one("SELECT state FROM media_retrieves WHERE id = ?", (rid,))
        if row is None:
            raise ValueError(f"no retrieve {rid}")
        if retrieve.cancel_queued(self.jobs.db, rid):
            return f"retrieve {rid} cancelled"
        if self.retriever is not None and self.retriever.cancel(rid):
            return f"retrieve {rid} is being cancelled (C-CANCEL sent to the source)"
        raise ValueError(f"retrieve {rid} is already {row['state']}")

    def finish_retrieves(self) -> None:
        """Close (or fail) the jobs of every retrieve that ended (see retrieve.py)."""
        for r in retrieve.unsettled(self.jobs.db):
            since = r["started_at"] or r["created_at"]
            # Collecting, or closed and not started: what a crash between the
            # steps below left half done is settled again at the next start.
            job_ids = [row[0] for row in self.jobs.db.query(
                "SELECT id FROM media_jobs j WHERE state IN (?, ?) AND EXISTS (SELECT 1 FROM "
                "media_job_instances i WHERE i.job_id = j.id AND i.study_instance_uid = ? "
                "AND i.added_at >= ?) ORDER BY created_at",
                (J.COLLECTING, J.READY, r["study_instance_uid"], since))]
            what = f"retrieve {r['id']} from {r['source']}"
            running = self.running()
            # A job an operator started meanwhile (`media burn`) is left to run.
            job_ids = [j for j in job_ids if running is None or running.job_id != j]
            for job_id in job_ids:
                if r["state"] == retrieve.DONE:
                    self.jobs.close(job_id, f"{what} finished", only_if=J.COLLECTING)
                    if r["burn"]:
                        self.jobs.update(job_id, "burn requested with the fetch",
                                         burn_requested=1, medium_refused=0)
                    continue
                self.jobs.close(job_id, f"{what} failed", only_if=J.COLLECTING)
                self.jobs.transition(job_id, "fail", f"{what} failed: {r['message']}",
                                     error=f"incomplete study: {r['message']}",
                                     finished_at=time.time())
            with self.jobs.db.write() as conn:
                conn.execute("UPDATE media_retrieves SET settled = 1, jobs = ? WHERE id = ?",
                             (" ".join(job_ids), r["id"]))
            if job_ids:
                self._probe_due = 0.0

    # -- executing a job ------------------------------------------------------------------

    def execute(self, execution: Execution) -> None:
        """Run the job from its current state until it is done or must wait."""
        job_id = execution.job_id
        job = self.jobs.job(job_id)
        if job["state"] == J.READY:
            medium = self.medium
            if not job["volumes"]:
                self._plan(job, medium)
            self.jobs.transition(job_id, "start", f"started on {medium.description}",
                                 started_at=job["started_at"] or time.time(), error=None,
                                 note=None, medium_generation=medium.generation,
                                 medium_refused=0)
        else:
            LOGGER.info("job %s: resuming from %s", job_id, job["state"])
            self.jobs.update(job_id, f"resuming from {job['state']} after a restart")
        while True:
            # What the previous step freed goes back to the system (memory.py).
            memory.release()
            if execution.cancel.is_set():
                raise JobInterrupted(execution.reason)
            job = self.jobs.job(job_id)
            volume = self.jobs.volume(job_id, job["volume"])
            if volume is None:
                raise RuntimeError(f"job {job_id} has no volume {job['volume']}")
            state = job["state"]
            if state == J.BUILDING:
                done = "already built"
                if volume["state"] == "planned":
                    self._build(job, volume, execution)
                    done = "built"
                self.jobs.transition(job_id, "built", f"volume {job['volume']} {done}")
            elif state == J.WRITING:
                done = "already written"
                if volume["state"] == "built":
                    self._write(job, volume, execution)
                    done = "written"
                self.jobs.transition(job_id, "written", f"volume {job['volume']} {done}")
            elif state == J.VERIFYING:
                if volume["state"] == "written":
                    self._verify(job, volume, execution)
                self._clean_work(job_id, job["volume"])
                if job["volume"] < job["volumes"]:
                    n = job["volume"] + 1
                    self.jobs.transition(
                        job_id, "next", f"volume {job['volume']} of {job['volumes']} done",
                        volume=n, attempts=0,
                        note=f"disc {n} of {job['volumes']}: insert the next medium",
                        progress=(n - 1) / job["volumes"],
                        # The medium just written is not the next one.
                        medium_refused=int(self.media.writer != "folder"),
                        medium_generation=self.medium.generation)
                    return
                self.jobs.transition(job_id, "verified", "done: every medium written and "
                                     "verified", progress=1.0, finished_at=time.time(),
                                     error=None, note=None, burn_requested=0)
                LOGGER.info("job %s done", job_id)
                if self.media.keep_done_hours == 0:
                    remove_paths(self.jobs.release(job_id, delete_job=False))
                return
            else:
                return

    def _plan(self, job: dict, medium: MediumStatus) -> None:
        fileset, span, _, _ = library()
        profile = profiles().choose(self.media.writer, medium.media_type,
                                    medium.capacity_bytes, self.media.profile)
        writer = self.writer()
        capacity = self.media.capacity_mb * 1024 * 1024
        if not capacity and self.media.writer != "folder" and medium.info is not None:
            capacity = writer.usable_bytes(medium.info)
        if capacity:
            # Planned from the totals of each series, read from the index in
            # batches: nothing is held per instance (a list of the job took
            # about 1 kB an instance).
            shared: dict[str, str] = {}

            def sources(rows):
                return (self._source(row, shared) for row in rows)

            plan = span.plan_runs(
                sources(self.jobs.iter_instances(job["id"])), capacity,
                series_of=lambda patient, study, series: sources(
                    self.jobs.iter_series(job["id"], patient, study, series)),
                size_of=lambda s: fileset.size_on_medium(s, profile),
                block_bytes=writer.block_bytes, key=lambda source, _position: source.key)
        else:
            # One volume of any size: every instance of the job.
            plan = [[(None, None)]]
        count = self.jobs.plan(job["id"], plan, profile=profile.name, writer=self.media.writer)
        LOGGER.info("job %s: %d instance(s) on %d volume(s) of %s, profile %s", job["id"],
                    count, len(plan),
                    f"{capacity / 1e6:.1f} MB" if capacity else "any size", profile.name)

    def _source(self, row, shared: dict[str, str]):
        """A job's instance for the media library.

        ``shared`` keeps one copy of each value that many instances repeat
        (SOP class, transfer syntax, study, series, patient): a job of 10 000
        instances then holds 10 000 SOP Instance UIDs, not 60 000 strings.
        """
        fileset, *_ = library()

        def one(value: str) -> str:
            return shared.setdefault(value, value)

        return fileset.SourceInstance(
            path=self.root / row["path"], sop_instance_uid=row["sop_instance_uid"],
            sop_class_uid=one(row["sop_class_uid"]),
            study_instance_uid=one(row["study_instance_uid"]),
            series_instance_uid=one(row["series_instance_uid"]),
            patient_id=one(row["patient_id"]),
            transfer_syntax_uid=one(row["transfer_syntax_uid"]), size=row["size"],
            sha256=row["sha256"], key=row["instance_id"])

    def work_dir(self, job_id: str, volume: int) -> Path:
        return self.root / "jobs" / job_id / f"vol{volume}"

    def image_path(self, job: dict, volume: int) -> Path:
        """The ISO image of a volume (its name is the name the folder writer gives it)."""
        _, _, iso, _ = library()
        name = iso.volume_id_from(J.volume_id(job["id"], volume, job["volumes"]))
        return self.work_dir(job["id"], volume) / f"{name}.iso"

    def _build(self, job: dict, volume: dict, execution: Execution) -> None:
        fileset, _, iso, _ = library()
        from .verify import sha256_file
        job_id, n = job["id"], volume["volume"]
        work = self.work_dir(job_id, n)
        if work.exists():
            remove_tree(work)
        work.mkdir(parents=True)
        sources = JobSources(self.jobs, job_id, n, self._source)
        label = fileset.MediaLabel(volume=n, volumes=job["volumes"], job_id=job_id,
                                   box_name=self.config.box.name,
                                   institution=self.config.box.institution,
                                   created=datetime.now().astimezone())
        progress = Progress(self.jobs, job, J.BUILDING, execution)
        # The manifest goes into the job store as the files are written; it
        # counts once the volume is "built" (below), in a durable commit.
        with self.jobs.manifest_writer(job_id, n) as manifest:
            result = fileset.build_fileset(
                sources, work / "fileset", fileset_id=J.fileset_id(job_id),
                profile=volume["profile"] or job["profile"], label=label, progress=progress,
                cancel=execution.cancel, replace=True, manifest=manifest.add,
                current=sources.current)
        image_bytes, image_sha = 0, ""
        if self.writer().needs_iso:
            image = self.image_path(job, n)
            image_bytes = iso.build_iso(work / "fileset", image,
                                        J.volume_id(job_id, n, job["volumes"]),
                                        progress=progress, cancel=execution.cancel)
            image_sha = sha256_file(image)[0]
            remove_tree(work / "fileset")
        sync_tree(work)
        self.jobs.set_volume(job_id, n, "built", built_at=time.time(),
                             image_bytes=image_bytes, image_sha256=image_sha,
                             profile=result.profile)

    def _write(self, job: dict, volume: dict, execution: Execution) -> None:
        job_id, n = job["id"], volume["volume"]
        writer = self.writer()
        progress = Progress(self.jobs, job, J.WRITING, execution)
        source = self.image_path(job, n) if writer.needs_iso else \
            self.work_dir(job_id, n) / "fileset"
        writer.write(source, progress=progress, cancel=execution.cancel)
        if execution.cancel.is_set():
            raise JobInterrupted(execution.reason)
        self.jobs.set_volume(job_id, n, "written", written_at=time.time(),
                             medium=self.medium.description)

    def _verify(self, job: dict, volume: dict, execution: Execution) -> None:
        job_id, n = job["id"], volume["volume"]
        writer = self.writer()
        if self.media.verify:
            progress = Progress(self.jobs, job, J.VERIFYING, execution)
            writer.verify(self.image_path(job, n) if writer.needs_iso else None,
                          self.jobs.manifest(job_id, n),
                          iso_sha256=volume["image_sha256"] or None,
                          progress=progress, cancel=execution.cancel)
        # The optical writer ejects after its read-back itself.
        if not (self.media.writer == "optical" and self.media.verify):
            self._eject()
        self.jobs.set_volume(job_id, n, "verified", verified_at=time.time())

    def _eject(self) -> None:
        if self.media.writer == "folder" or (
                self.media.writer == "optical" and not self.media.optical.eject):
            return
        *_, writers = library()
        try:
            self.writer().eject()
        except writers.MediaError as exc:
            LOGGER.warning("eject failed: %s", _media_message(exc))

    def _media_error(self, job_id: str, exc) -> None:
        kind = getattr(exc, "kind", "")
        message = _media_message(exc)
        job = self.jobs.job(job_id)
        if kind in WAIT_KINDS:
            LOGGER.warning("job %s waits: %s", job_id, message)
            if job["state"] == J.READY:
                self.jobs.update(job_id, message, error=message, note=None, medium_refused=1,
                                 medium_generation=self.medium.generation)
            else:
                self.jobs.transition(job_id, "wait", message, error=message, note=None,
                                     medium_refused=1,
                                     medium_generation=self.medium.generation)
            return
        self._fail(job_id, message, medium=kind in MEDIUM_KINDS)

    def _fail(self, job_id: str, message: str, medium: bool) -> None:
        try:
            job = self.jobs.job(job_id)
        except J.UnknownJob:
            return
        if job["state"] not in J.ACTIVE and job["state"] != J.READY:
            return
        attempts = job["attempts"] + (1 if medium else 0)
        retry = medium and self.media.retry_on_new_medium and attempts < self.media.max_attempts
        if medium and retry:
            message += (f" (attempt {attempts} of {self.media.max_attempts}; insert a fresh "
                        "medium to retry)")
        elif medium:
            message += f" (attempt {attempts} of {self.media.max_attempts})"
        LOGGER.error("job %s failed: %s", job_id, message)
        self.jobs.transition(job_id, "fail", message, error=message, attempts=attempts,
                             auto_retry=int(retry), finished_at=time.time(), burn_requested=0,
                             medium_generation=self.medium.generation)

    def _interrupted(self, execution: Execution, reason: str) -> None:
        job_id = execution.job_id
        if reason == "stopping":
            LOGGER.info("job %s interrupted by the stop; it resumes at the next start", job_id)
            return
        if reason == "removed":
            self._fail(job_id, "the medium was removed while the job was running", medium=True)
            return
        job = self.jobs.job(job_id)
        if job["state"] in J.ACTIVE or job["state"] == J.READY:
            self.jobs.transition(job_id, "cancel", "cancelled by the operator",
                                 finished_at=time.time(), auto_retry=0, burn_requested=0,
                                 note=None)
        LOGGER.info("job %s cancelled", job_id)

    # -- housekeeping ----------------------------------------------------------------------

    def _clean_work(self, job_id: str, volume: int) -> None:
        work = self.work_dir(job_id, volume)
        if work.exists():
            remove_tree(work, ignore_errors=True)

    def _purge_expired(self) -> None:
        now = time.time()
        if now - self._last_purge < 60 and self.media.keep_done_hours:
            return
        self._last_purge = now
        for entry in os.scandir(self.root / "tmp"):
            try:
                if now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                    os.unlink(entry.path)
                    LOGGER.info("removed stale temporary file %s", entry.name)
            except (FileNotFoundError, IsADirectoryError):
                pass
        for job_id in self.jobs.expired(self.media.keep_done_hours * 3600, now):
            LOGGER.info("job %s: removing its instances (kept %g h)", job_id,
                        self.media.keep_done_hours)
            remove_paths(self.jobs.release(job_id, delete_job=False))

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.publish is None or (not force and now - self._last_publish < PUBLISH_INTERVAL):
            return
        self._last_publish = now
        self.publish()

    def snapshot(self) -> dict:
        execution = self.running()
        active = None
        if execution is not None:
            try:
                job = self.jobs.job(execution.job_id)
                active = {"id": job["id"], "state": job["state"], "progress": job["progress"],
                          "detail": json.loads(job["detail"]) if job["detail"] else None}
            except J.UnknownJob:
                pass
        return {"jobs": self.jobs.summary(), "active_job": active,
                "medium": self.medium.as_dict(), "writer": self.media.writer}

    def stop(self, timeout: float | None = 10) -> None:
        super().stop(timeout)
        execution = self.running()
        if execution is not None:
            execution.interrupt("stopping")
            execution.thread.join(30)


def _media_message(exc) -> str:
    text = str(exc) or getattr(exc, "kind", "") or type(exc).__name__
    return text.splitlines()[0][:300]


def sync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (a built step survives power loss)."""
    for _rel, path, is_dir, _size in walk_tree(root):
        if is_dir:
            fsync_dir(path)
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(root)
    fsync_dir(Path(root).parent)


def remove_paths(paths) -> None:
    for p in paths:
        p = Path(p)
        try:
            if p.is_dir() and not p.is_symlink():
                remove_tree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            pass
