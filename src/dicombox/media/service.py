"""The media service: the burner AE (Verification and Storage SCP) and its media jobs.

What is sent to the burner AE is spooled exactly as the router spools
(``<state_dir>/media/spool``, same durability contract: fsync'd file, then the
index row committed, then Success) and, in the same transaction, put into
the collecting media job of its group (study, patient or association; see
:mod:`dicombox.media.jobs`).  The :class:`~dicombox.media.runner.JobRunner`
closes idle jobs, waits for a medium (udev or probing), and builds, writes
and verifies each job's media.

Failure policy: like the router, the burner must never drop an accepted
instance (anything unexpected in a C-STORE becomes a failure status, and
the modality keeps its copy).  A job that cannot be written fails as a job,
with its instances kept until an operator retries or deletes it; the
service keeps running.  A stop interrupts the running step, which resumes
from its last completed step at the next start, as after a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
import weakref

from ..config import Config
from ..dimse import AssociationPolicy, Listener, make_ae, storage_contexts
from ..dimse.storage import StorageSCP, enable_streaming, service_snapshot
from ..lifecycle import Service
from ..store import InstanceStore
from ..uids import STORAGE_SOP_CLASSES, VERIFICATION
from . import jobs as J
from . import mcm, retrieve
from .jobs import Group, JobStore
from .runner import JobRunner
from .udev import MediaWatcher, UdevUnavailable

LOGGER = logging.getLogger("dicombox.media")

#: The key of the ``service_state`` row this service publishes.
STATE_KEY = "media"


def accepted_sop_classes(config: Config) -> list[str]:
    return [u.uid for u in STORAGE_SOP_CLASSES] + list(config.storage.private_sop_classes)


def media_contexts(config: Config):
    """The presentation contexts the burner AE accepts, as negotiated and published."""
    contexts = storage_contexts([VERIFICATION.uid],
                                ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    contexts += storage_contexts(accepted_sop_classes(config),
                                 list(config.storage.transfer_syntax_uids()))
    contexts += storage_contexts([mcm.SOP_CLASS], ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    return contexts


def mcm_profiles(config: Config) -> tuple[str, ...]:
    """The profiles a media creation request may name: the configured one when fixed."""
    return () if config.media.profile == "auto" else (config.media.profile,)


class Associations:
    """A key per open association, for grouping jobs by association.

    The store may commit an instance's row from another receiving thread
    (group commit), so the job hook cannot ask which association it runs
    in: the C-STORE handler notes the association of the SOP Instance it is
    storing (:meth:`storing`), and the hook looks it up by that UID.
    """

    def __init__(self):
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._storing: dict[str, str] = {}
        self._lock = threading.Lock()

    def key(self, assoc) -> str:
        with self._lock:
            key = self._keys.get(assoc)
            if key is None:
                key = uuid.uuid4().hex
                self._keys[assoc] = key
            return key

    @contextlib.contextmanager
    def storing(self, assoc, sop_instance_uid: str):
        key = self.key(assoc)
        with self._lock:
            self._storing[sop_instance_uid] = key
        try:
            yield key
        finally:
            with self._lock:
                if self._storing.get(sop_instance_uid) == key:
                    del self._storing[sop_instance_uid]

    def of_instance(self, sop_instance_uid: str) -> str:
        with self._lock:
            return self._storing.get(sop_instance_uid, "")

    def pop(self, assoc) -> str | None:
        with self._lock:
            return self._keys.pop(assoc, None)


class MediaStorageSCP(StorageSCP):
    """The Storage SCP, noting which association each instance arrives on."""

    def __init__(self, *args, associations: Associations, **kwargs):
        super().__init__(*args, **kwargs)
        self.associations = associations

    def handle_store(self, event):
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.associations.storing(event.assoc, uid):
            return super().handle_store(event)


class MediaService(Service):
    name = "media"

    def __init__(self, config: Config, port: int | None = None):
        self.config = config
        self.port = config.media.port if port is None else port
        self.store: InstanceStore | None = None
        self.jobs: JobStore | None = None
        self.listener: Listener | None = None
        self.scp: StorageSCP | None = None
        self.mcm: mcm.MediaCreationSCP | None = None
        self.runner: JobRunner | None = None
        self.retriever: retrieve.Retriever | None = None
        self.watcher: MediaWatcher | None = None
        self.associations = Associations()
        self.started_at = time.time()
        self._udev_problem: str | None = None

    def start(self) -> None:
        cfg = self.config
        media = cfg.media
        # Always "replace": a study sent again must land in a new job (a second
        # disc); jobs that still need the earlier file keep a hard link of it.
        self.store = InstanceStore(cfg.box.state_dir, "media",
                                   reserve_bytes=cfg.storage.reserve_mb * 1024 * 1024,
                                   duplicates="replace",
                                   migrations=J.MIGRATIONS + mcm.MIGRATIONS + retrieve.MIGRATIONS)
        recovered = self.store.recover()
        if not recovered["clean"]:
            LOGGER.warning("media: previous run did not stop cleanly; spool checked")
        enable_streaming(self.store.tmp_dir)
        self.jobs = JobStore(self.store.db, self.store.root)
        for job in self.jobs.jobs(J.ACTIVE):
            LOGGER.warning("job %s was %s when the service stopped; it resumes", job["id"],
                           job["state"])
        self.runner = JobRunner(cfg, self.jobs, self.store.root, publish=self.publish)
        resumed = retrieve.resume(self.store.db)
        if resumed:
            LOGGER.warning("%d retrieve(s) were running when the service stopped; they run "
                           "again", resumed)
        self.retriever = retrieve.Retriever(cfg, self.store.db, on_finished=self.runner.wake)
        self.runner.retriever = self.retriever
        if media.udev:
            watcher = MediaWatcher(self.runner.on_medium_event)
            try:
                watcher.start()
            except UdevUnavailable as exc:
                self._udev_problem = str(exc)
                LOGGER.warning("%s; probing the writer every %g s instead", exc,
                               media.probe_seconds)
            else:
                self.watcher = watcher
                self.runner.watcher = watcher
        self.scp = MediaStorageSCP(self.store, set(accepted_sop_classes(cfg)),
                                   on_stored=self._on_stored,
                                   associations=self.associations)
        ae = make_ae(media.ae_title, cfg.network, media.max_associations)
        ae.supported_contexts = media_contexts(cfg)
        policy = AssociationPolicy(media.ae_title, media.allowed_calling_aets,
                                   media.allowed_peers)
        from pynetdicom import evt
        self.mcm = mcm.MediaCreationSCP(self.jobs, mcm_profiles(cfg), wake=self.runner.wake)
        handlers = [*self.scp.handlers(), *self.mcm.handlers(),
                    (evt.EVT_RELEASED, self._on_association_end),
                    (evt.EVT_ABORTED, self._on_association_end)]
        self.listener = Listener(ae, cfg.box.listen_address, self.port, policy, handlers)
        self.runner.start()
        self.listener.start()
        self.port = self.listener.port
        # After the listener: what a source sends back must find the Media AE.
        self.retriever.start()
        self.publish()

    # -- receiving --------------------------------------------------------------------

    def _on_stored(self, conn, instance_id, replaced, info) -> None:
        """Inside the instance's commit transaction: put it into its job."""
        key = ""
        if self.config.media.grouping == "association":
            key = self.associations.of_instance(info.sop_instance_uid)
        group = Group.of(self.config.media.grouping, info, key)
        self.jobs.add_instance(conn, instance_id, info, group)

    def _on_association_end(self, event) -> None:
        key = self.associations.pop(event.assoc)
        if key is None or self.config.media.grouping != "association":
            return
        # A job still receiving a study being fetched closes when the fetch ends.
        closed = self.jobs.close_group(f"association:{key}", "the association ended",
                                       hold_studies=retrieve.held_studies(self.store.db))
        if closed and self.runner is not None:
            self.runner.wake()

    # -- state -------------------------------------------------------------------------

    def healthy(self) -> bool:
        ok = self.runner is not None and self.runner.is_alive()
        if self.retriever is not None:
            ok = ok and self.retriever.is_alive()
        if self.watcher is not None:
            ok = ok and self.watcher.alive()
        return ok

    def snapshot(self) -> dict:
        scp = self.scp
        snap = {
            **service_snapshot(self.config.media.ae_title, self.config.box.listen_address,
                               self.port, self.listener, scp, self.store, self.started_at),
            "udev": ("on" if self.watcher is not None else
                     (f"unavailable: {self._udev_problem}" if self._udev_problem else "off")),
        }
        if self.runner is not None:
            snap.update(self.runner.snapshot())
        if self.store is not None:
            snap["retrieves"] = retrieve.summary(self.store.db)
        return snap

    def publish(self) -> None:
        if self.store is not None:
            self.store.set_state(STATE_KEY, json.dumps(self.snapshot()))

    def status(self) -> str:
        snap = self.snapshot()
        c = snap["counters"]
        jobs = snap.get("jobs", {})
        active = snap.get("active_job")
        line = (f"{snap['ae_title']} on {snap['address']}:{snap['port']}: "
                f"{snap['active_associations']} association(s), {c.get('stored', 0)} stored; "
                f"jobs: {jobs.get('collecting', 0)} collecting, {jobs.get('ready', 0)} waiting, "
                f"{jobs.get('failed', 0)} failed")
        if active:
            line += f"; job {active['id']} {active['state']} {100 * active['progress']:.0f}%"
        retrieves = snap.get("retrieves", {})
        if retrieves.get(retrieve.RUNNING) or retrieves.get(retrieve.QUEUED):
            line += (f"; fetching {retrieves.get(retrieve.RUNNING, 0)} study, "
                     f"{retrieves.get(retrieve.QUEUED, 0)} queued")
        return line

    def stop(self) -> None:
        if self.retriever is not None:
            self.retriever.stop()
        if self.listener is not None:
            self.listener.close(self.scp.inflight.close_and_wait if self.scp else None)
        if self.watcher is not None:
            self.watcher.stop()
        if self.runner is not None:
            self.runner.stop()
        if self.store is not None:
            self.store.set_state(STATE_KEY, json.dumps({**self.snapshot(), "stopped": True}))
            self.store.close(clean=True)


# -- conformance statement tables -------------------------------------------------------

#: What each job state means, for the conformance statement and `dicombox media`.
STATE_MEANINGS = {
    J.COLLECTING: "instances are arriving; the job closes after `media.idle_seconds` without "
                  "a new one, at the end of the association (grouping by association), or "
                  "on the button / `dicombox media burn`",
    J.READY: "closed, waiting for a usable medium (or for the button when "
             "`media.auto_burn = false`); also between the media of a split job",
    J.BUILDING: "the DICOM file-set (DICOMDIR, IHE PDI extras) and the ISO image of the "
                "current medium are built",
    J.WRITING: "the current medium is written",
    J.VERIFYING: "the current medium is read back and compared file by file",
    J.DONE: "every medium was written and verified",
    J.FAILED: "a step failed; the error is kept with the job and its instances are kept "
              "until an operator retries or deletes it",
    J.CANCELLED: "cancelled by an operator",
}

_EVENT_WORDS = {
    "close": "closed", "cancel": "cancel", "start": "usable medium present", "built": "built",
    "wait": "medium missing or unusable", "fail": "failure", "written": "written",
    "verified": "verified, last medium", "next": "verified, more media to go",
    "retry": "retry (operator, or a fresh medium)",
}


def _media_contexts() -> str:
    from ..conformance import md_table
    cfg = Config()
    ts = ", ".join(cfg.storage.transfer_syntaxes)
    rows = [[VERIFICATION.name, VERIFICATION.uid,
             "ExplicitVRLittleEndian, ImplicitVRLittleEndian", "SCP", "None"],
            ["Every Storage SOP Class of Table 2 (and `storage.private_sop_classes`)",
             "see Table 2", f"{ts} (in this order of preference)", "SCP", "None"],
            [mcm.SOP_CLASS_NAME, mcm.SOP_CLASS,
             "ExplicitVRLittleEndian, ImplicitVRLittleEndian", "SCP", "None"],
            [retrieve.STUDY_ROOT_FIND_NAME, retrieve.STUDY_ROOT_FIND,
             "ExplicitVRLittleEndian, ImplicitVRLittleEndian (proposed)", "SCU", "None"],
            [retrieve.STUDY_ROOT_MOVE_NAME, retrieve.STUDY_ROOT_MOVE,
             "ExplicitVRLittleEndian, ImplicitVRLittleEndian (proposed)", "SCU", "None"]]
    return md_table(["Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Ext. Neg."], rows)


def _job_states() -> str:
    from ..conformance import md_table
    rows = []
    for state in J.STATES:
        moves = [f"{_EVENT_WORDS.get(event, event)} → `{target}`"
                 for (src, event), target in J.TRANSITIONS.items() if src == state]
        rows.append([f"`{state}`", STATE_MEANINGS[state], "; ".join(moves) or "(final)"])
    return md_table(["State", "Meaning", "Next states"], rows)


def _job_commands() -> str:
    from ..conformance import md_table
    what = {
        "burn": "close and start the given job, or the oldest `ready`/`collecting` one",
        "cancel": "cancel the given job, or the running one (the step in progress is stopped)",
        "eject": "eject the disc (refused while a job uses the drive)",
        "retry": "make a `failed`, `cancelled` or `done` job `ready` again (another copy)",
        "delete": "delete a job that is not running, and the instances only it holds",
        "fetch": "queue a retrieve of a study from a `[[media.sources]]` PACS (6.6)",
        "fetch-cancel": "cancel a queued retrieve, or ask the source to stop the running one "
                        "(C-CANCEL; its jobs fail as for an incomplete study)",
    }
    return md_table(["Command", "Effect"], [[f"`{c}`", what[c]] for c in J.COMMANDS])


def _retrieve_statuses() -> str:
    from ..conformance import md_table
    return md_table(["Service Status", "Code", "What the Media AE does"],
                    [list(row) for row in retrieve.STATUS_MEANINGS])


def conformance_tables() -> dict:
    return {"media-contexts": _media_contexts, "media-job-states": _job_states,
            "media-job-commands": _job_commands, "media-retrieve-statuses": _retrieve_statuses,
            **mcm.conformance_tables()}
