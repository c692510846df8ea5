"""Study-arrived notifications to the RIS (reference §3.1.3.3.5).

The router's index (``<state_dir>/router/index.db``, table ``instances``) is
read, read-only and through SQL only, to decide when a study has arrived:

* **quiet**: nothing new for the study for ``notifications.quiet_seconds``;
* **MPPS completed**: a procedure step set to COMPLETED references instances
  and every one of them is in the router's index (``on_mpps_completed``).

Either queues one row in ``notifications`` with the list of the study's
instances as they are at that moment; the row is sent (Instance Availability
Notification N-CREATE, or Basic Study Content Notification C-STORE), retried
with backoff and dead-lettered like the MPPS relay.  ``watched_studies``
remembers up to which reception time a study was notified, so instances that
arrive later produce a new notification listing the whole study again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..dimse import NODELAY_HANDLERS, make_ae
from ..lifecycle import Worker
from ..store.db import connect
from . import journal, model
from .relay import DEAD, DELIVERED, RETRY, backoff, is_success_or_warning

LOGGER = logging.getLogger("dicombox.mpps.notify")

IAN_SOP_CLASS = "1.2.840.10008.5.1.4.33"
SCN_SOP_CLASS = "1.2.840.10008.1.9"
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
#: How far back the scan looks before its watermark: an instance whose
#: reception time was taken just before the watermark may commit just after it.
OVERLAP_SECONDS = 120.0
#: Basic Study Content Notification statuses (PS3.4 D, retired): all mean "received".
SCN_RECEIVED = (0x0000, 0x0001, 0x0002, 0x0003)


class RouterIndex:
    """Read-only access to the router's index; absent until the router has run."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "router" / "index.db"
        self._conn: sqlite3.Connection | None = None

    def conn(self) -> sqlite3.Connection | None:
        if self._conn is None and self.path.exists():
            try:
                self._conn = connect(self.path, readonly=True)
                self._conn.execute("SELECT 1 FROM instances LIMIT 1")
            except sqlite3.Error as exc:
                LOGGER.debug("router index not readable yet: %s", exc)
                self.close()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def study_payload(router: sqlite3.Connection, study: str, retrieve_aet: str,
                  steps: list[str]) -> dict | None:
    rows = router.execute(
        "SELECT series_instance_uid, sop_class_uid, sop_instance_uid, patient_id, "
        "patient_name, study_id, accession_number FROM instances "
        "WHERE study_instance_uid = ? ORDER BY series_instance_uid, id", (study,)).fetchall()
    if not rows:
        return None
    series: dict[str, list[list[str]]] = {}
    for r in rows:
        series.setdefault(r["series_instance_uid"], []).append(
            [r["sop_class_uid"], r["sop_instance_uid"]])
    first = rows[0]
    return {"study": study, "patient_id": first["patient_id"],
            "patient_name": first["patient_name"], "study_id": first["study_id"],
            "accession_number": first["accession_number"], "retrieve_aet": retrieve_aet,
            "series": series, "steps": steps, "instances": len(rows)}


def ian_dataset(payload: dict) -> Dataset:
    """The Instance Availability Notification Attribute List (PS3.4 Table R.3.2-1);
    optional attributes are forbidden there, so it carries nothing else."""
    ds = Dataset()
    pps = []
    for uid in payload["steps"]:
        item = Dataset()
        item.ReferencedSOPClassUID = model.MPPS_SOP_CLASS
        item.ReferencedSOPInstanceUID = uid
        item.PerformedWorkitemCodeSequence = []
        pps.append(item)
    ds.ReferencedPerformedProcedureStepSequence = pps
    ds.StudyInstanceUID = payload["study"]
    series = []
    for series_uid, instances in payload["series"].items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        refs = []
        for sop_class, sop_instance in instances:
            r = Dataset()
            r.ReferencedSOPClassUID = sop_class
            r.ReferencedSOPInstanceUID = sop_instance
            r.InstanceAvailability = "ONLINE"
            r.RetrieveAETitle = payload["retrieve_aet"]
            refs.append(r)
        s.ReferencedSOPSequence = refs
        series.append(s)
    ds.ReferencedSeriesSequence = series
    return ds


def scn_dataset(payload: dict, sop_instance_uid: str) -> Dataset:
    """A Basic Study Descriptor (Basic Study Content Notification, PS3.4 Annex D)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SCN_SOP_CLASS
    ds.SOPInstanceUID = sop_instance_uid
    ds.AccessionNumber = payload["accession_number"]
    ds.PatientName = payload["patient_name"]
    ds.PatientID = payload["patient_id"]
    ds.StudyID = payload["study_id"]
    ds.StudyInstanceUID = payload["study"]
    series = []
    for series_uid, instances in payload["series"].items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        s.RetrieveAETitle = payload["retrieve_aet"]
        s.StorageMediaFileSetID = ""
        s.StorageMediaFileSetUID = ""
        refs = []
        for sop_class, sop_instance in instances:
            r = Dataset()
            r.ReferencedSOPClassUID = sop_class
            r.ReferencedSOPInstanceUID = sop_instance
            refs.append(r)
        s.ReferencedImageSequence = refs
        series.append(s)
    ds.ReferencedSeriesSequence = series
    return ds


def referenced_instances(ds: Dataset) -> list[str]:
    """SOP Instance UIDs a procedure step lists in its Performed Series Sequence."""
    out = []
    for series in ds.get("PerformedSeriesSequence") or []:
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(key) or []:
                if ref.get("ReferencedSOPInstanceUID"):
                    out.append(str(ref.ReferencedSOPInstanceUID))
    return out


def _received(row, status: int) -> bool:
    """Success, an SCN "study content" status, or a duplicate after a resend."""
    if is_success_or_warning(status):
        return True
    if row["kind"] == "scn" and status in SCN_RECEIVED:
        return True
    return bool(row["attempts"]) and status == 0x0111


class NotifyWorker(Worker):
    """Detects whole studies in the router's index and sends the notifications."""

    def __init__(self, db, config):
        super().__init__("mpps-notify")
        self.db = db
        self.config = config
        self.settings = config.mpps.notifications
        self.router = RouterIndex(config.box.state_dir)
        self.counters = {"queued": 0, "delivered": 0, "retried": 0, "dead": 0}
        self.retrieve_aet = self.settings.retrieve_ae_title or config.router.ae_title

    def step(self) -> float:
        router = self.router.conn()
        if router is not None:
            try:
                self.scan(router)
            except sqlite3.OperationalError as exc:
                # The router may be mid-checkpoint or its file replaced; reopen next time.
                LOGGER.warning("cannot read the router's index: %s", exc)
                self.router.close()
        self.send_due()
        return self.settings.poll_seconds

    # -- detection ---------------------------------------------------------------

    def scan(self, router: sqlite3.Connection) -> None:
        now = time.time()
        row = self.db.query_one("SELECT value FROM service_state WHERE key = 'notify'")
        watermark = json.loads(row[0])["watermark"] if row else 0.0
        fresh = router.execute(
            "SELECT study_instance_uid, MAX(received_at) AS last FROM instances "
            "WHERE received_at > ? GROUP BY study_instance_uid",
            (watermark - OVERLAP_SECONDS,)).fetchall()
        if fresh:
            with self.db.write() as conn:
                for r in fresh:
                    conn.execute(
                        "INSERT INTO watched_studies (study_instance_uid, last_received_at) "
                        "VALUES (?, ?) ON CONFLICT(study_instance_uid) DO UPDATE SET "
                        "last_received_at = MAX(last_received_at, excluded.last_received_at)",
                        (r["study_instance_uid"], r["last"]))
                top = max(r["last"] for r in fresh)
                journal.set_state(conn, "notify", {"watermark": max(watermark, top)})
        if self.settings.on_mpps_completed:
            self._completed_steps(router)
        quiet = self.db.query(
            "SELECT study_instance_uid, last_received_at FROM watched_studies "
            "WHERE last_received_at <= ? AND (notified_received_at IS NULL "
            "OR last_received_at > notified_received_at)",
            (now - self.settings.quiet_seconds,))
        for r in quiet:
            self._queue(router, r["study_instance_uid"], "quiet")

    def _completed_steps(self, router: sqlite3.Connection) -> None:
        for step in self.db.query("SELECT sop_instance_uid, dataset FROM steps "
                                  "WHERE notify_state = 'waiting'"):
            refs = referenced_instances(journal.from_bytes(step["dataset"]))
            if not refs:
                self._step_done(step["sop_instance_uid"], "none")
                continue
            studies: set[str] = set()
            present = 0
            for i in range(0, len(refs), 500):
                chunk = refs[i:i + 500]
                marks = ",".join("?" for _ in chunk)
                for r in router.execute(
                        "SELECT study_instance_uid FROM instances "
                        f"WHERE sop_instance_uid IN ({marks})", chunk):
                    studies.add(r[0])
                    present += 1
            if present < len(set(refs)):
                continue
            for study in sorted(studies):
                self._queue(router, study, f"procedure step {step['sop_instance_uid']} "
                            "completed and all its instances arrived")
            self._step_done(step["sop_instance_uid"], "done")

    def _step_done(self, uid: str, state: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE steps SET notify_state = ? WHERE sop_instance_uid = ?",
                         (state, uid))

    def _queue(self, router: sqlite3.Connection, study: str, reason: str) -> None:
        steps = [r[0] for r in self.db.query(
            "SELECT sop_instance_uid FROM steps WHERE study_instance_uid = ? "
            "ORDER BY created_at", (study,))]
        now = time.time()
        last = router.execute("SELECT MAX(received_at) FROM instances "
                              "WHERE study_instance_uid = ?", (study,)).fetchone()[0]
        seen = self.db.query_one("SELECT notified_received_at FROM watched_studies "
                                 "WHERE study_instance_uid = ?", (study,))
        if last is not None and seen is not None and seen[0] is not None and seen[0] >= last:
            return  # already notified with every instance it has now
        payload = study_payload(router, study, self.retrieve_aet, steps)
        with self.db.write() as conn:
            if payload is not None:
                conn.execute(
                    "INSERT INTO notifications (study_instance_uid, kind, sop_instance_uid, "
                    "reason, payload, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (study, self.settings.kind, generate_uid(), reason, json.dumps(payload),
                     now, now))
                self.counters["queued"] += 1
            conn.execute(
                "INSERT INTO watched_studies (study_instance_uid, last_received_at, "
                "notified_received_at) VALUES (?, ?, ?) ON CONFLICT(study_instance_uid) "
                "DO UPDATE SET notified_received_at = excluded.notified_received_at, "
                "last_received_at = MAX(last_received_at, excluded.last_received_at)",
                (study, last or now, last or now))
        if payload is not None:
            LOGGER.info("study %s arrived (%s): %d instance(s); notification queued", study,
                        reason, payload["instances"])

    # -- sending ---------------------------------------------------------------------

    def send_due(self) -> None:
        due = self.db.query("SELECT * FROM notifications WHERE state = 'pending' "
                            "AND next_attempt_at <= ? ORDER BY id LIMIT 20", (time.time(),))
        if not due:
            return
        s = self.settings
        sop_class = IAN_SOP_CLASS if s.kind == "ian" else SCN_SOP_CLASS
        ae = make_ae(self.config.mpps.ae_title, self.config.network, 1)
        ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
        assoc = ae.associate(s.host, s.port, ae_title=s.ae_title, evt_handlers=NODELAY_HANDLERS)
        if not assoc.is_established:
            reason = f"cannot associate with {s.ae_title}@{s.host}:{s.port}"
            for row in due:
                self._outcome(row, RETRY, None, reason)
            return
        try:
            for row in due:
                if not assoc.is_established:
                    self._outcome(row, RETRY, None, "association lost")
                    continue
                self._send(assoc, row)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send(self, assoc, row) -> None:
        payload = json.loads(row["payload"])
        if row["kind"] == "ian":
            status_ds, _ = assoc.send_n_create(ian_dataset(payload), IAN_SOP_CLASS,
                                               row["sop_instance_uid"])
        else:
            status_ds = assoc.send_c_store(scn_dataset(payload, row["sop_instance_uid"]))
        status = status_ds.get("Status") if status_ds is not None else None
        if status is None:
            verdict, reason = RETRY, "no response (association aborted or timed out)"
        elif _received(row, status):
            verdict, reason = DELIVERED, ""
        elif (status & 0xFF00) == 0xA700 or status == 0x0213:
            verdict, reason = RETRY, f"status 0x{status:04X}"
        else:
            comment = str(status_ds.get("ErrorComment", "") or "")
            verdict, reason = DEAD, f"refused with 0x{status:04X} {comment}".strip()
        self._outcome(row, verdict, status, reason)

    def _outcome(self, row, verdict: str, status, reason: str) -> None:
        now = time.time()
        cfg = self.config.mpps
        attempts = row["attempts"] + 1
        if verdict == RETRY and cfg.dead_letter_hours and \
                now - row["created_at"] > cfg.dead_letter_hours * 3600:
            verdict = DEAD
        with self.db.write() as conn:
            if verdict == DELIVERED:
                conn.execute("UPDATE notifications SET state = 'done', attempts = ?, "
                             "delivered_at = ?, last_status = ?, last_error = '' WHERE id = ?",
                             (attempts, now, status, row["id"]))
            elif verdict == DEAD:
                conn.execute("UPDATE notifications SET state = 'dead', attempts = ?, "
                             "last_status = ?, last_error = ? WHERE id = ?",
                             (attempts, status, reason, row["id"]))
            else:
                delay = backoff(attempts, cfg.retry_initial_seconds, cfg.retry_max_seconds)
                conn.execute("UPDATE notifications SET attempts = ?, next_attempt_at = ?, "
                             "last_status = ?, last_error = ? WHERE id = ?",
                             (attempts, now + delay, status, reason, row["id"]))
        self.counters[{DELIVERED: "delivered", DEAD: "dead", RETRY: "retried"}[verdict]] += 1
        log = LOGGER.info if verdict == DELIVERED else LOGGER.warning
        log("notification for study %s: %s %s", row["study_instance_uid"], verdict, reason)

    def stop(self, timeout: float | None = 10) -> None:
        super().stop(timeout)
        self.router.close()
