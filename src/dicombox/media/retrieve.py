"""Fetching a study from a PACS for burning: the Media AE as C-FIND and C-MOVE SCU.

``dicombox media fetch SOURCE STUDY_UID`` queues a *retrieve* (a row of
``media_retrieves``).  The :class:`Retriever` thread runs the queue, one
retrieve at a time, oldest first: it asks the source (a ``[[media.sources]]``
entry) with a Study Root C-MOVE to send the study to the Media AE's own title.
``--accession`` or ``--patient-id`` instead queue a *query*: a Study Root
C-FIND at the study level finds the source's studies with that Accession
Number or Patient ID, and each becomes a retrieve of its own (its
``parent`` is the query).
The source then opens its own association to the Media AE and sends the
instances as C-STOREs, which are spooled and collected into media jobs like
anything else sent to the burner (grouping, durability: see ``service.py``).

While a retrieve runs, the jobs collecting its study are not closed for
being idle (a PACS may pause longer than ``media.idle_seconds``).  When the
source's final response arrives, every instance it reported as sent has
been stored (each C-STORE is answered only once durable, and the source
answers the C-MOVE only after its C-STOREs), and the runner thread
(:meth:`~dicombox.media.runner.JobRunner.finish_retrieves`) settles the jobs:

- every sub-operation completed: the jobs holding the study are closed (and
  marked for burning when the fetch asked for it);
- some failed, or the source refused or broke off: the jobs holding what did
  arrive are failed with the reason, so a partial study is never burnt by
  itself; ``dicombox media retry JOB`` burns it anyway, ``dicombox media
  fetch`` again collects the whole study into a new job.

A retrieve caught running by a stop or a crash runs again from the start at
the next start-up (a C-MOVE is repeatable: instances sent twice replace
their first copy in the collecting job).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from ..dimse import NODELAY_HANDLERS, make_ae, refusal_text
from ..lifecycle import Worker
from ..store.db import Migration

LOGGER = logging.getLogger("dicombox.media.retrieve")

#: Study Root Query/Retrieve Information Model - MOVE.
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_MOVE_NAME = "Study Root Query/Retrieve Information Model - MOVE"
#: Study Root Query/Retrieve Information Model - FIND.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_FIND_NAME = "Study Root Query/Retrieve Information Model - FIND"
#: The Message ID of every C-FIND and C-MOVE request (one per association), for C-CANCEL.
MOVE_MESSAGE_ID = 1
#: Studies one query may turn into retrieves (a Patient ID of a long history).
MAX_STUDIES = 50
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STATES = (QUEUED, RUNNING, DONE, FAILED)

#: Seconds between two looks at the queue when nothing woke the retriever.
POLL_SECONDS = 2.0

MIGRATIONS = [
    Migration("media-retrieves-1", """
        CREATE TABLE media_retrieves (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL,
            accession_number TEXT NOT NULL DEFAULT '',
            patient_id TEXT NOT NULL DEFAULT '',
            parent INTEGER,
            burn INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            warning INTEGER NOT NULL DEFAULT 0,
            remaining INTEGER,
            status INTEGER,
            message TEXT,
            jobs TEXT,
            settled INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX media_retrieves_state ON media_retrieves(state, id);
        ALTER TABLE media_commands ADD COLUMN argument TEXT
    """),
]

#: What the Media AE makes of the final C-MOVE response statuses (PS3.4 C.4.2.1.5).
STATUS_MEANINGS = [
    ("Success", "0000", "every sub-operation completed: the retrieve is `done`, the jobs "
                        "holding the study are closed (and marked for burning with `--burn`); "
                        "with no sub-operation at all it fails: the source has no such study"),
    ("Warning", "B000", "some sub-operations failed: the retrieve fails, the jobs holding "
                        "what arrived are failed with the counts (none failed, only "
                        "warnings: as Success)"),
    ("Pending", "FF00, FF01", "the counts are recorded and shown by `dicombox media fetches`; "
                              "the retrieve goes on"),
    ("Cancel", "FE00", "the retrieve fails: cancelled, after the operator's C-CANCEL "
                       "(`dicombox media fetch-cancel`) or by the source itself"),
    ("Refused: Move Destination unknown", "A801",
     "the retrieve fails, telling the operator to declare the Media AE (title, address, "
     "port) as a DICOM node of the source"),
    ("Refused: Out of Resources", "A701, A702", "the retrieve fails with the source's reason"),
    ("Error: Identifier does not match SOP Class", "A900", "the retrieve fails"),
    ("Failure: Unable to process", "Cxxx", "the retrieve fails"),
    ("(no response, association refused or broken off)", "—",
     "the retrieve fails with the reason (connection refused, rejection, timeout after "
     "`response_timeout` seconds without a response)"),
]


#: A UID: digits and dots (components with a leading zero, which PS3.5 9.1
#: forbids, are accepted: older systems made such UIDs, and a PACS keeps them).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def check_study_uid(value: str) -> str | None:
    """Why ``value`` cannot be the Study Instance UID of a C-MOVE, or None."""
    if len(value) > 64 or not _UID.fullmatch(value):
        return f"{value!r} is not a Study Instance UID (digits and dots, at most 64)"
    return None


def check_key(name: str, value: str, longest: int) -> str | None:
    """Why ``value`` cannot be matched exactly as an Accession Number or Patient ID."""
    if not value.strip() or len(value) > longest or any(c in value for c in "\\*?"):
        return (f"{value!r} is not a {name} to match exactly (1 to {longest} characters, "
                "no wildcard * or ?, no backslash)")
    return None


def check_request(study: str, accession: str, patient_id: str) -> str | None:
    """Why a fetch of these keys cannot be queued (exactly one must be given), or None."""
    if sum(map(bool, (study, accession, patient_id))) != 1:
        return "fetch needs one of a Study Instance UID, an Accession Number or a Patient ID"
    if study:
        return check_study_uid(study)
    if accession:
        return check_key("Accession Number", accession, 16)
    return check_key("Patient ID", patient_id, 64)


def queue(conn, source: str, study_instance_uid: str, burn: bool, accession_number: str = "",
          patient_id: str = "", parent: int | None = None) -> int:
    """Queue a retrieve (or, without a study, a query) inside the caller's
    transaction; return its id."""
    cur = conn.execute(
        "INSERT INTO media_retrieves (source, study_instance_uid, accession_number, "
        "patient_id, parent, burn, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (source, study_instance_uid, accession_number, patient_id, parent, int(burn), QUEUED,
         time.time()))
    return cur.lastrowid


def held_studies(db) -> list[str]:
    """Study Instance UIDs whose jobs stay open: being retrieved, or retrieved
    and not yet settled by the runner."""
    return [r[0] for r in db.query(
        "SELECT DISTINCT study_instance_uid FROM media_retrieves WHERE study_instance_uid "
        "!= '' AND (state = ? OR (state IN (?, ?) AND settled = 0))", (RUNNING, DONE, FAILED))]


def unsettled(db) -> list[dict]:
    """Finished retrieves whose jobs the runner has not closed or failed yet."""
    return [dict(r) for r in db.query(
        "SELECT * FROM media_retrieves WHERE state IN (?, ?) AND settled = 0 ORDER BY id",
        (DONE, FAILED))]


def summary(db) -> dict[str, int]:
    """Retrieves per state (the service's published state)."""
    return {r[0]: r[1] for r in db.query("SELECT state, COUNT(*) FROM media_retrieves "
                                         "GROUP BY state")}


def cancel_queued(db, rid: int) -> bool:
    """Cancel a retrieve that has not started; False when it is not queued."""
    with db.write() as conn:
        return conn.execute(
            "UPDATE media_retrieves SET state = ?, finished_at = ?, message = ? "
            "WHERE id = ? AND state = ?",
            (FAILED, time.time(), "cancelled by the operator before it started", rid,
             QUEUED)).rowcount > 0


def resume(db) -> int:
    """Put retrieves a stop or a crash caught running back in the queue."""
    with db.write() as conn:
        return conn.execute("UPDATE media_retrieves SET state = ? WHERE state = ?",
                            (QUEUED, RUNNING)).rowcount


@dataclass
class Outcome:
    state: str
    message: str
    status: int | None = None


def _counts(status) -> dict:
    def count(keyword):
        value = status.get(keyword)
        return None if value is None or value == "" else int(value)
    return {"remaining": count("NumberOfRemainingSuboperations"),
            "completed": count("NumberOfCompletedSuboperations"),
            "failed": count("NumberOfFailedSuboperations"),
            "warning": count("NumberOfWarningSuboperations")}


def final_outcome(code: int, counts: dict, move_aet: str, where: str,
                  comment: str = "") -> Outcome:
    """The retrieve's end, from the final C-MOVE response (see STATUS_MEANINGS)."""
    done, failed, warning = (counts.get(k) or 0 for k in ("completed", "failed", "warning"))
    said = f" ({comment})" if comment else ""
    if code == 0x0000:
        if done == 0 and not failed:
            return Outcome(FAILED, f"{where} has no instance of this study", code)
        return Outcome(DONE, f"{done} instance(s) retrieved", code)
    if code == 0xB000 and not failed and warning:
        # Every instance arrived; the Media AE answered some with a warning.
        return Outcome(DONE, f"{done + warning} instance(s) retrieved, {warning} with "
                             "warnings", code)
    if code == 0xB000:
        return Outcome(FAILED, f"{where} sent {done} instance(s); {failed} failed and "
                               f"{warning} had warnings{said}", code)
    if code == 0xFE00:
        return Outcome(FAILED, f"{where} cancelled the retrieve after {done} instance(s)", code)
    if code == 0xA801:
        return Outcome(FAILED, f"{where} does not know the move destination {move_aet!r}: "
                               f"declare {move_aet} (this box's address and media port) as "
                               f"a DICOM node of the source{said}", code)
    if code in (0xA701, 0xA702):
        return Outcome(FAILED, f"{where} is out of resources (status {code:04X}){said}", code)
    if code == 0xA900:
        return Outcome(FAILED, f"{where} refused the identifier (status A900){said}", code)
    return Outcome(FAILED, f"{where} failed the retrieve with status {code:04X} after "
                           f"{done} instance(s){said}", code)


class Retriever(Worker):
    """Runs the retrieve queue, one C-MOVE at a time."""

    def __init__(self, config, db, on_finished=None):
        super().__init__("media-retriever")
        self.config = config
        self.db = db
        self.on_finished = on_finished or (lambda: None)
        self._assoc = None
        #: The id of the running retrieve an operator cancelled.
        self._cancelled: int | None = None
        self._running: int | None = None
        #: The query model of the request in progress (C-FIND or C-MOVE).
        self._model = STUDY_ROOT_MOVE

    def cancel(self, rid: int) -> bool:
        """Ask the source to stop sending the running retrieve ``rid`` (C-CANCEL);
        False when it is not the one running."""
        assoc = self._assoc
        if self._running != rid:
            return False
        self._cancelled = rid
        if assoc is not None and assoc.is_established:
            try:
                assoc.send_c_cancel(MOVE_MESSAGE_ID, query_model=self._model)
            except (RuntimeError, ValueError) as exc:
                LOGGER.warning("cannot send C-CANCEL for retrieve %d: %s", rid, exc)
        return True

    def stop(self, timeout: float | None = 10) -> None:
        """Stop, aborting the C-MOVE in progress (it runs again at the next start)."""
        self.stopping.set()
        assoc = self._assoc
        if assoc is not None:
            assoc.abort()
            # pynetdicom waits for the next response up to the DIMSE timeout;
            # an empty message ends that wait now.
            assoc.dimse.msg_queue.put((None, None))
        super().stop(timeout)

    def step(self) -> float:
        row = self.db.query_one("SELECT * FROM media_retrieves WHERE state = ? ORDER BY id "
                                "LIMIT 1", (QUEUED,))
        if row is None:
            return POLL_SECONDS
        self.run_one(dict(row))
        return 0

    def run_one(self, row: dict) -> Outcome:
        rid = row["id"]
        with self.db.write() as conn:
            conn.execute("UPDATE media_retrieves SET state = ?, started_at = ?, "
                         "attempts = attempts + 1, completed = 0, failed = 0, warning = 0, "
                         "remaining = NULL, status = NULL, message = NULL WHERE id = ?",
                         (RUNNING, time.time(), rid))
        self._running, self._cancelled = rid, None
        try:
            outcome = self._move(row)
        except Exception as exc:  # noqa: BLE001 - the retrieve fails, not the service
            LOGGER.exception("retrieve %d failed unexpectedly", rid)
            outcome = Outcome(FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._running = None
        if self._cancelled == rid and outcome.state == FAILED:
            outcome.message = f"cancelled by the operator: {outcome.message}"
        if self.stopping.is_set() and outcome.state == FAILED and outcome.status is None:
            # Interrupted by the stop: it stays running and is queued again at start-up.
            return outcome
        with self.db.write() as conn:
            conn.execute("UPDATE media_retrieves SET state = ?, finished_at = ?, status = ?, "
                         "message = ? WHERE id = ?",
                         (outcome.state, time.time(), outcome.status, outcome.message, rid))
        log = LOGGER.info if outcome.state == DONE else LOGGER.warning
        what = (f"study {row['study_instance_uid']}" if row["study_instance_uid"] else
                f"the studies of {row['accession_number'] or row['patient_id']!r}")
        log("retrieve %d of %s from %s: %s", rid, what, row["source"], outcome.message)
        self.on_finished()
        return outcome

    def _move(self, row: dict) -> Outcome:
        from pydicom.dataset import Dataset

        media = self.config.media
        source = media.source(row["source"])
        if source is None:
            return Outcome(FAILED, f"no source {row['source']!r} in media.sources")
        where = f"{source.ae_title}@{source.host}:{source.port}"
        ae = make_ae(media.ae_title, self.config.network, 1)
        ae.dimse_timeout = source.response_timeout
        ae.add_requested_context(STUDY_ROOT_MOVE, TRANSFER_SYNTAXES)
        ae.add_requested_context(STUDY_ROOT_FIND, TRANSFER_SYNTAXES)
        assoc = ae.associate(source.host, source.port, ae_title=source.ae_title,
                             evt_handlers=NODELAY_HANDLERS)
        if not assoc.is_established:
            return Outcome(FAILED, refusal_text(assoc, where))
        self._assoc = assoc
        try:
            self._model = STUDY_ROOT_MOVE if row["study_instance_uid"] else STUDY_ROOT_FIND
            if not row["study_instance_uid"]:
                return self._find(assoc, row, where)
            if not any(cx.abstract_syntax == STUDY_ROOT_MOVE for cx in assoc.accepted_contexts):
                return Outcome(FAILED, f"{where} does not accept Study Root C-MOVE "
                                       "(presentation context rejected)")
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = row["study_instance_uid"]
            # The last count of each kind: a final response may leave them out.
            counts: dict = {}
            for status, _ in assoc.send_c_move(identifier, media.ae_title, STUDY_ROOT_MOVE,
                                                msg_id=MOVE_MESSAGE_ID, priority=0):
                if self.stopping.is_set():
                    break
                code = status.get("Status") if status else None
                if code is None:
                    return Outcome(FAILED, f"no response from {where} within "
                                           f"{source.response_timeout:g} s, or it broke off "
                                           "the association")
                counts.update((k, v) for k, v in _counts(status).items() if v is not None)
                self._progress(row["id"], counts)
                if code in (0xFF00, 0xFF01):
                    continue
                comment = str(status.get("ErrorComment", "") or "")
                return final_outcome(int(code), counts, media.ae_title, where, comment)
            return Outcome(FAILED, "stopped" if self.stopping.is_set() else
                           f"{where} ended the retrieve without a final response")
        finally:
            self._assoc = None
            if assoc.is_established:
                if self.stopping.is_set():
                    assoc.abort()
                else:
                    assoc.release()

    def _find(self, assoc, row: dict, where: str) -> Outcome:
        """A query: find the studies, queue a retrieve for each."""
        from pydicom.dataset import Dataset

        if not any(cx.abstract_syntax == STUDY_ROOT_FIND for cx in assoc.accepted_contexts):
            return Outcome(FAILED, f"{where} does not accept Study Root C-FIND "
                                   "(presentation context rejected)")
        key = (f"Accession Number {row['accession_number']!r}" if row["accession_number"]
               else f"Patient ID {row['patient_id']!r}")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        identifier.AccessionNumber = row["accession_number"]
        identifier.PatientID = row["patient_id"]
        identifier.StudyDate = ""
        studies: dict[str, tuple[str, str]] = {}
        for status, found in assoc.send_c_find(identifier, STUDY_ROOT_FIND,
                                               msg_id=MOVE_MESSAGE_ID, priority=0):
            if self.stopping.is_set():
                return Outcome(FAILED, "stopped")
            code = status.get("Status") if status else None
            if code is None:
                return Outcome(FAILED, f"no C-FIND response from {where}, or it broke off "
                                       "the association")
            if self._cancelled == row["id"]:
                return Outcome(FAILED, "the query was cancelled", int(code))
            if code in (0xFF00, 0xFF01):
                uid = str(getattr(found, "StudyInstanceUID", "") or "") if found else ""
                if uid and check_study_uid(uid) is None:
                    studies[uid] = (str(getattr(found, "AccessionNumber", "") or ""),
                                    str(getattr(found, "PatientID", "") or ""))
                continue
            if code != 0x0000:
                comment = str(status.get("ErrorComment", "") or "")
                return Outcome(FAILED, f"{where} failed the query for {key} with status "
                                       f"{int(code):04X}" + (f" ({comment})" if comment else ""),
                               int(code))
            break
        if not studies:
            return Outcome(FAILED, f"{where} has no study with {key}", 0)
        if len(studies) > MAX_STUDIES:
            return Outcome(FAILED, f"{where} has {len(studies)} studies with {key}, more than "
                                   f"{MAX_STUDIES}: fetch them by Study Instance UID", 0)
        # The retrieves and the query's end in one transaction: a crash cannot
        # leave them queued with the query queued again (every study twice).
        with self.db.write() as conn:
            ids = [queue(conn, row["source"], uid, bool(row["burn"]), accession, patient,
                         parent=row["id"]) for uid, (accession, patient) in studies.items()]
            outcome = Outcome(DONE, f"{len(ids)} stud{'y' if len(ids) == 1 else 'ies'} with "
                                    f"{key}: retrieve{'s' if len(ids) > 1 else ''} "
                                    f"{', '.join(map(str, ids))}", 0)
            conn.execute("UPDATE media_retrieves SET state = ?, finished_at = ?, status = ?, "
                         "message = ? WHERE id = ?",
                         (outcome.state, time.time(), outcome.status, outcome.message,
                          row["id"]))
        self.wake()
        return outcome

    def _progress(self, rid: int, counts: dict) -> None:
        if not counts:
            return
        with self.db.write(durable=False) as conn:
            conn.execute(f"UPDATE media_retrieves SET {', '.join(f'{k} = ?' for k in counts)} "
                         "WHERE id = ?", (*counts.values(), rid))
