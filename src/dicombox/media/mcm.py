"""Media Creation Management SCP (PS3.4 Annex S) on the burner AE.

A workstation first sends the instances to the burner AE by C-STORE (they
are spooled and collected as usual), then asks for a disc of exactly the
instances it names:

- **N-CREATE** makes a *request*: a media job (:mod:`dicombox.media.jobs`)
  holding exactly the referenced instances, in state ``collecting`` with no
  ``last_instance_at`` (so the idle timer never closes it) and group
  ``mcm:<SOP Instance UID>`` (so no received instance joins it).  The
  referenced instances leave the ordinary ``collecting`` jobs they arrived
  in (a job left empty is removed), so they are not burned twice.  The job,
  its instances and the ``media_mcm_requests`` row mapping the request's
  SOP Instance UID to the job are one committed transaction before Success.
- **N-ACTION 1** (Initiate) queues the ``burn`` command for the job, **N-ACTION
  2** (Cancel) the ``cancel`` command, in the same table the panel and the
  CLI use, so the runner carries them out exactly as for an operator.
- **N-GET** reads the job's state and maps it onto Execution Status.

Requests live as long as their job (until ``dicombox media delete``).
"""

from __future__ import annotations

import json
import logging
import time

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..dimse import status as S
from ..store import Migration
from . import jobs as J

LOGGER = logging.getLogger("dicombox.media.mcm")

SOP_CLASS = "1.2.840.10008.5.1.1.33"
SOP_CLASS_NAME = "Media Creation Management SOP Class"

INITIATE, CANCEL = 1, 2
#: Annex S service-specific statuses.
ALREADY_INITIATED = 0xA510
ALREADY_COMPLETED = 0xC201
IN_PROGRESS = 0xC202
CANCEL_DENIED = 0xC203

#: At most this many instances in one request (a DVD-sized study of small images).
MAX_INSTANCES = 10000
PRIORITIES = ("HIGH", "MED", "LOW")
YES_NO = ("YES", "NO")

MIGRATIONS = [
    Migration("media-mcm-1", """
        CREATE TABLE media_mcm_requests (
            sop_instance_uid TEXT PRIMARY KEY,
            job_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            calling_ae TEXT NOT NULL DEFAULT '',
            attributes TEXT NOT NULL,
            initiated_at REAL,
            copies INTEGER NOT NULL DEFAULT 1,
            priority TEXT NOT NULL DEFAULT 'MED',
            cancelled_at REAL
        );
        CREATE INDEX media_mcm_requests_job ON media_mcm_requests(job_id)
    """),
]

#: Job state -> (Execution Status, Execution Status Info), for an initiated request.
#: A request not yet initiated is IDLE whatever its job's state.
EXECUTION = {
    J.COLLECTING: ("IDLE", "NORMAL"),
    J.READY: ("PENDING", "QUEUED"),
    J.BUILDING: ("CREATING", "NORMAL"),
    J.WRITING: ("CREATING", "NORMAL"),
    J.VERIFYING: ("CREATING", "NORMAL"),
    J.DONE: ("DONE", "NORMAL"),
    J.FAILED: ("FAILURE", "UNKNOWN"),
    J.CANCELLED: ("FAILURE", "CANCELLED"),
}

#: The Execution Status Info of a PENDING request whose job waits for a medium.
WAITING_INFO = "NO_MEDIUM"


class RequestError(Exception):
    """A request the SCP refuses: a status and a one-line reason."""

    def __init__(self, status: int, comment: str, tag: int | None = None):
        self.status, self.comment, self.tag = status, comment, tag
        super().__init__(comment)

    def response(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment[:64]
        return ds


def _text(ds: Dataset, keyword: str, allowed=None) -> str | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    value = str(ds[keyword].value).strip()
    if allowed is not None and value.upper() not in allowed:
        raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                           f"{keyword} must be one of {'/'.join(allowed)}, not {value!r}",
                           ds[keyword].tag)
    return value.upper() if allowed is not None else value


def parse_create(ds: Dataset, profiles) -> dict:
    """Validate an N-CREATE Attribute List; return what the request records."""
    if "ReferencedSOPSequence" not in ds:
        raise RequestError(S.MISSING_ATTRIBUTE, "Referenced SOP Sequence (0008,1199) missing",
                           0x00081199)
    items = ds.ReferencedSOPSequence
    if not items:
        raise RequestError(S.MISSING_ATTRIBUTE_VALUE,
                           "Referenced SOP Sequence (0008,1199) is empty", 0x00081199)
    if len(items) > MAX_INSTANCES:
        raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                           f"more than {MAX_INSTANCES} instances in one request", 0x00081199)
    refs, profile = [], None
    # The profile belongs in each item (Table S.3.2-1); one at the top level is taken too.
    for n, item in enumerate([ds, *items]):
        wanted = _text(item, "RequestedMediaApplicationProfile")
        if wanted is not None:
            if wanted not in profiles:
                raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                                   f"profile {wanted} not supported", 0x2200000C)
            if profile not in (None, wanted):
                raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                                   "one Requested Media Application Profile per request",
                                   0x2200000C)
            profile = wanted
        if n == 0:
            continue
        for keyword, tag in (("ReferencedSOPClassUID", "(0008,1150)"),
                             ("ReferencedSOPInstanceUID", "(0008,1155)")):
            if not item.get(keyword):
                raise RequestError(S.MISSING_ATTRIBUTE,
                                   f"item {n}: {keyword} {tag} missing", 0x00081199)
        refs.append((str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)))
    if len({uid for _, uid in refs}) != len(refs):
        raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                           "an instance is referenced twice", 0x00081199)
    attrs = {
        "label_text": _text(ds, "LabelText"),
        "label_from_instances": _text(ds, "LabelUsingInformationExtractedFromInstances",
                                      YES_NO),
        "label_style": _text(ds, "LabelStyleSelection"),
        "media_disposition": _text(ds, "MediaDisposition"),
        "barcode_value": _text(ds, "BarcodeValue"),
        "barcode_symbology": _text(ds, "BarcodeSymbology"),
        "allow_splitting": _text(ds, "AllowMediaSplitting", YES_NO),
        "include_non_dicom": _text(ds, "IncludeNonDICOMObjects"),
        "include_display_application": _text(ds, "IncludeDisplayApplication"),
        "preserve_instances": _text(ds, "PreserveCompositeInstancesAfterMediaCreation",
                                    YES_NO),
        "fileset_id": _text(ds, "StorageMediaFileSetID"),
        "fileset_uid": _text(ds, "StorageMediaFileSetUID"),
        "profile": profile,
    }
    return {"refs": refs, "attrs": attrs}


def parse_initiate(ds: Dataset | None) -> tuple[int, str]:
    """Number of Copies and Request Priority of an Initiate action."""
    ds = ds or Dataset()
    copies = 1
    if ds.get("NumberOfCopies") not in (None, ""):
        try:
            copies = int(ds.NumberOfCopies)
        except (TypeError, ValueError):
            copies = 0
        if copies != 1:
            raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                               "Number of Copies must be 1 (one copy per request)",
                               0x20000010)
    priority = (_text(ds, "RequestPriority", PRIORITIES)
                or _text(ds, "PrintPriority", PRIORITIES) or "MED")
    return copies, priority


class MediaCreationSCP:
    """N-CREATE / N-ACTION / N-GET handlers for the Media Creation Management SOP Class."""

    def __init__(self, jobs: J.JobStore, profiles, wake=None):
        self.jobs = jobs
        self.db = jobs.db
        self.profiles = tuple(profiles)
        self.wake = wake or (lambda: None)

    def handlers(self) -> list:
        from pynetdicom import evt
        return [(evt.EVT_N_CREATE, self.handle_create), (evt.EVT_N_ACTION, self.handle_action),
                (evt.EVT_N_GET, self.handle_get)]

    @staticmethod
    def _refuse(exc: RequestError, what: str):
        LOGGER.warning("media creation %s refused: 0x%04X %s", what, exc.status, exc.comment)
        return exc.response(), None

    # -- N-CREATE ---------------------------------------------------------------------

    def handle_create(self, event):
        req = event.request
        if str(req.AffectedSOPClassUID) != SOP_CLASS:
            return S.NO_SUCH_SOP_CLASS, None
        try:
            ds = event.attribute_list
        except Exception as exc:  # noqa: BLE001 - any decoding problem is the SCU's
            return self._refuse(RequestError(S.CANNOT_DECODE, f"cannot decode: {exc}"),
                                "N-CREATE")
        uid = str(req.AffectedSOPInstanceUID) if req.AffectedSOPInstanceUID else generate_uid()
        try:
            request = parse_create(ds, self.profiles)
            job_id = self.create(uid, request, event.assoc.requestor.ae_title)
        except RequestError as exc:
            return self._refuse(exc, "N-CREATE")
        LOGGER.info("media creation request %s: job %s with %d instance(s)", uid, job_id,
                    len(request["refs"]))
        reply = self._attributes(uid, None)
        if not req.AffectedSOPInstanceUID:
            reply.AffectedSOPInstanceUID = uid
        return S.SUCCESS, reply

    def create(self, uid: str, request: dict, calling_ae: str, now: float | None = None) -> str:
        """One transaction: the request, its job and the job's instances."""
        now = now or time.time()
        refs = request["refs"]
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM media_mcm_requests WHERE sop_instance_uid = ?",
                            (uid,)).fetchone():
                raise RequestError(S.DUPLICATE_SOP_INSTANCE, f"request {uid} exists")
            rows, missing = [], []
            for sop_class, sop_uid in refs:
                inst = conn.execute("SELECT * FROM instances WHERE sop_instance_uid = ?",
                                    (sop_uid,)).fetchone()
                if inst is None:
                    missing.append(sop_uid)
                    continue
                if inst["sop_class_uid"] != sop_class:
                    raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                                       f"{sop_uid} is not of class {sop_class}", 0x00081199)
                rows.append(inst)
            if missing:
                raise RequestError(S.INVALID_ATTRIBUTE_VALUE,
                                   f"{len(missing)} instance(s) not received: {missing[0]}",
                                   0x00081199)
            job_id = J.JobStore._new_id(conn, now)
            first = rows[0]
            conn.execute(
                "INSERT INTO media_jobs (id, state, created_at, updated_at, group_kind, "
                "group_key, patient_id, patient_name, description, profile) "
                "VALUES (?, ?, ?, ?, 'request', ?, ?, ?, ?, ?)",
                (job_id, J.COLLECTING, now, now, f"mcm:{uid}", first["patient_id"],
                 first["patient_name"], f"media creation request from {calling_ae}".strip(),
                 request["attrs"]["profile"] or ""))
            J.JobStore._log(conn, job_id, J.COLLECTING,
                            f"media creation request {uid} from {calling_ae}", now)
            emptied = set()
            for inst in rows:
                conn.execute(
                    "INSERT INTO media_job_instances (job_id, instance_id, path, "
                    "sop_instance_uid, sop_class_uid, study_instance_uid, "
                    "series_instance_uid, patient_id, transfer_syntax_uid, size, sha256, "
                    "added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, inst["id"], f"spool/{inst['path']}", inst["sop_instance_uid"],
                     inst["sop_class_uid"], inst["study_instance_uid"],
                     inst["series_instance_uid"], inst["patient_id"],
                     inst["transfer_syntax_uid"], inst["size"], inst["sha256"], now))
                # Not twice on media: the instance leaves the ordinary job still collecting it.
                for other in conn.execute(
                        "SELECT j.id FROM media_job_instances i JOIN media_jobs j "
                        "ON j.id = i.job_id WHERE i.instance_id = ? AND j.state = ? "
                        "AND j.group_kind != 'request'", (inst["id"], J.COLLECTING)):
                    conn.execute("DELETE FROM media_job_instances WHERE job_id = ? AND "
                                 "instance_id = ?", (other["id"], inst["id"]))
                    emptied.add(other["id"])
            for other in emptied | {job_id}:
                conn.execute(
                    "UPDATE media_jobs SET instances = (SELECT COUNT(*) FROM "
                    "media_job_instances WHERE job_id = ?1), bytes = (SELECT "
                    "COALESCE(SUM(size), 0) FROM media_job_instances WHERE job_id = ?1), "
                    "updated_at = ?2 WHERE id = ?1", (other, now))
            for other in emptied:
                if conn.execute("SELECT instances FROM media_jobs WHERE id = ?",
                                (other,)).fetchone()["instances"] == 0:
                    conn.execute("DELETE FROM media_log WHERE job_id = ?", (other,))
                    conn.execute("DELETE FROM media_jobs WHERE id = ?", (other,))
            conn.execute(
                "INSERT INTO media_mcm_requests (sop_instance_uid, job_id, created_at, "
                "calling_ae, attributes) VALUES (?, ?, ?, ?, ?)",
                (uid, job_id, now, calling_ae, json.dumps(
                    {**request["attrs"], "refs": refs})))
        return job_id

    # -- N-ACTION ---------------------------------------------------------------------

    def _request(self, uid: str):
        row = self.db.query_one("SELECT r.*, j.state, j.error, j.note, j.volumes, "
                                "j.medium_refused FROM media_mcm_requests r LEFT JOIN "
                                "media_jobs j ON j.id = r.job_id WHERE "
                                "r.sop_instance_uid = ?", (uid,))
        if row is None or row["state"] is None:  # never made, or its job was deleted
            raise RequestError(S.NO_SUCH_OBJECT_INSTANCE, f"no media creation request {uid}")
        return dict(row)

    def handle_action(self, event):
        req = event.request
        uid = str(req.RequestedSOPInstanceUID)
        action = req.ActionTypeID
        try:
            if str(req.RequestedSOPClassUID) != SOP_CLASS:
                raise RequestError(S.NO_SUCH_SOP_CLASS, "not a media creation request")
            if action not in (INITIATE, CANCEL):
                raise RequestError(S.NO_SUCH_ACTION_TYPE, f"no action type {action}")
            try:
                info = event.action_information
            except Exception as exc:  # noqa: BLE001 - any decoding problem is the SCU's
                raise RequestError(S.CANNOT_DECODE, f"cannot decode: {exc}") from None
            result = (self.initiate(uid, info) if action == INITIATE else self.cancel(uid))
        except RequestError as exc:
            return self._refuse(exc, f"N-ACTION {action} on {uid}")
        self.wake()
        LOGGER.info("media creation request %s: %s", uid, result)
        return S.SUCCESS, None

    def initiate(self, uid: str, info: Dataset | None) -> str:
        copies, priority = parse_initiate(info)
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute("SELECT r.*, j.state FROM media_mcm_requests r LEFT JOIN "
                               "media_jobs j ON j.id = r.job_id WHERE r.sop_instance_uid = ?",
                               (uid,)).fetchone()
            if row is None or row["state"] is None:
                raise RequestError(S.NO_SUCH_OBJECT_INSTANCE,
                                   f"no media creation request {uid}")
            if row["initiated_at"] is not None:
                raise RequestError(ALREADY_INITIATED, "already initiated")
            if row["state"] in (J.FAILED, J.CANCELLED):
                raise RequestError(S.PROCESSING_FAILURE, f"request is {row['state']}")
            conn.execute("UPDATE media_mcm_requests SET initiated_at = ?, copies = ?, "
                         "priority = ? WHERE sop_instance_uid = ?",
                         (now, copies, priority, uid))
            if row["state"] == J.COLLECTING:  # else an operator already started it
                conn.execute("INSERT INTO media_commands (command, job_id, created_at) "
                             "VALUES ('burn', ?, ?)", (row["job_id"], now))
        return f"initiated (job {row['job_id']}, priority {priority})"

    def cancel(self, uid: str) -> str:
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute("SELECT r.*, j.state FROM media_mcm_requests r LEFT JOIN "
                               "media_jobs j ON j.id = r.job_id WHERE r.sop_instance_uid = ?",
                               (uid,)).fetchone()
            if row is None or row["state"] is None:
                raise RequestError(S.NO_SUCH_OBJECT_INSTANCE,
                                   f"no media creation request {uid}")
            state = row["state"]
            if state == J.DONE:
                raise RequestError(ALREADY_COMPLETED, "media creation already completed")
            if state in (J.WRITING, J.VERIFYING):
                raise RequestError(IN_PROGRESS, f"the medium is already {state}")
            if state == J.CANCELLED or row["cancelled_at"] is not None:
                return "already cancelled"
            conn.execute("UPDATE media_mcm_requests SET cancelled_at = ? WHERE "
                         "sop_instance_uid = ?", (now, uid))
            conn.execute("INSERT INTO media_commands (command, job_id, created_at) "
                         "VALUES ('cancel', ?, ?)", (row["job_id"], now))
        return f"cancel queued (job {row['job_id']} was {state})"

    # -- N-GET ------------------------------------------------------------------------

    def handle_get(self, event):
        req = event.request
        uid = str(req.RequestedSOPInstanceUID)
        try:
            if str(req.RequestedSOPClassUID) != SOP_CLASS:
                raise RequestError(S.NO_SUCH_SOP_CLASS, "not a media creation request")
            wanted = req.AttributeIdentifierList or []
            if not isinstance(wanted, list | tuple):  # one tag arrives as a single value
                wanted = [wanted]
            return S.SUCCESS, self._attributes(uid, wanted)
        except RequestError as exc:
            return self._refuse(exc, f"N-GET of {uid}")

    def status_of(self, row: dict) -> tuple[str, str]:
        if row["initiated_at"] is None and row["state"] == J.COLLECTING:
            return EXECUTION[J.COLLECTING]
        status, info = EXECUTION[row["state"]]
        if row["state"] == J.COLLECTING:  # initiated, not yet closed by the runner
            return "PENDING", "QUEUED"
        if row["state"] == J.READY and (row["error"] or row["note"]):
            info = WAITING_INFO
        return status, info

    def _attributes(self, uid: str, wanted: list | None) -> Dataset:
        row = self._request(uid)
        attrs = json.loads(row["attributes"])
        status, info = self.status_of(row)
        ds = Dataset()
        ds.ExecutionStatus = status
        ds.ExecutionStatusInfo = info
        ds.TotalNumberOfPiecesOfMediaCreated = (row["volumes"] or 0) if row["state"] == J.DONE \
            else 0
        ds.StorageMediaFileSetID = J.fileset_id(row["job_id"])
        if attrs.get("label_text"):
            ds.LabelText = attrs["label_text"]
            if not attrs["label_text"].isascii():
                ds.SpecificCharacterSet = "ISO_IR 192"
        if attrs.get("label_from_instances"):
            ds.LabelUsingInformationExtractedFromInstances = attrs["label_from_instances"]
        if attrs.get("profile"):
            ds.RequestedMediaApplicationProfile = attrs["profile"]
        refs = []
        for sop_class, sop_uid in attrs["refs"]:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_uid
            refs.append(item)
        ds.ReferencedSOPSequence = refs
        if row["state"] == J.FAILED:
            failed = []
            for ref in refs:  # the job fails as a whole
                item = Dataset()
                item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
                item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
                item.FailureReason = S.PROCESSING_FAILURE
                failed.append(item)
            ds.FailedSOPSequence = failed
        if wanted:
            keep = {int(t) for t in wanted} | {0x00080005}  # the character set stays
            for elem in list(ds):
                if int(elem.tag) not in keep:
                    del ds[elem.tag]
        return ds


def execution_rows() -> list[list[str]]:
    """The Execution Status table of the conformance statement."""
    rows = [["(not yet initiated)", "IDLE", "NORMAL"]]
    for state, (status, info) in EXECUTION.items():
        if state == J.COLLECTING:
            rows.append(["initiated, not yet started (`collecting`)", "PENDING", "QUEUED"])
            continue
        if state == J.READY:
            info = f"{info}, or {WAITING_INFO} while no usable medium is present"
        rows.append([f"`{state}`", status, info])
    return rows


STATUSES = [
    ("N-CREATE", S.SUCCESS, "the request and its job are committed"),
    ("N-CREATE", S.MISSING_ATTRIBUTE, "Referenced SOP Sequence, or a Referenced SOP "
     "Class/Instance UID in an item, missing"),
    ("N-CREATE", S.MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence empty"),
    ("N-CREATE", S.INVALID_ATTRIBUTE_VALUE, "an instance not received (or no longer held) "
     "by the Media AE, of another SOP class than referenced, referenced twice; more than "
     f"{MAX_INSTANCES} instances; an unsupported profile; a bad YES/NO value"),
    ("N-CREATE", S.DUPLICATE_SOP_INSTANCE, "a request with this SOP Instance UID exists"),
    ("N-ACTION", S.SUCCESS, "Initiate: the burn is queued; Cancel: the cancel is queued "
     "(or the request was already cancelled)"),
    ("N-ACTION", ALREADY_INITIATED, "Initiate on a request already initiated"),
    ("N-ACTION", S.PROCESSING_FAILURE, "Initiate on a request cancelled (or failed) before "
     "initiation"),
    ("N-ACTION", S.INVALID_ATTRIBUTE_VALUE, "Number of Copies other than 1, an unknown "
     "Request Priority"),
    ("N-ACTION", ALREADY_COMPLETED, "Cancel of a request whose media are done"),
    ("N-ACTION", IN_PROGRESS, "Cancel while the medium is written or verified"),
    ("N-ACTION", S.NO_SUCH_ACTION_TYPE, "an action type other than 1 and 2"),
    ("N-ACTION, N-GET", S.NO_SUCH_OBJECT_INSTANCE, "no request with this SOP Instance UID"),
    ("N-GET", S.SUCCESS, "the requested attributes (all when none are listed)"),
]

STATUS_NAMES = {ALREADY_INITIATED: "Refused: Initiate already received",
                ALREADY_COMPLETED: "Media creation request already completed",
                IN_PROGRESS: "Media creation request in progress, cannot be interrupted",
                CANCEL_DENIED: "Cancellation denied"}


def _statuses() -> str:
    from ..conformance import md_table
    return md_table(["Operation", "Status", "Meaning", "When"],
                    [[op, f"{code:04X}", STATUS_NAMES.get(code, S.NAMES.get(code, "")), when]
                     for op, code, when in STATUSES])


def _execution() -> str:
    from ..conformance import md_table
    return md_table(["Job state", "Execution Status", "Execution Status Info"],
                    execution_rows())


def conformance_tables() -> dict:
    return {"mcm-statuses": _statuses, "mcm-execution": _execution}
