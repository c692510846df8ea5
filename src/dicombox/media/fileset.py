"""Build one medium's DICOM file-set: DICOMDIR, the instances, and the IHE PDI extras.

The DICOMDIR holds pydicom's directory records (:mod:`.dicomdir`):
PATIENT/STUDY/SERIES and the leaf type each SOP class needs (IMAGE, SR
DOCUMENT, KEY OBJECT DOC, PRESENTATION, ENCAP DOC, WAVEFORM, RT ...), File
IDs ``PT000000/ST000000/SE000000/IM000000`` (at most 8 components of at most
8 characters from A-Z, 0-9 and _), and their offsets.  Each record carries
the instance's Specific Character Set and its values byte for byte, so a
name in ISO 2022 IR 87, ISO_IR 192 or ISO_IR 100 reads as it was sent.

How the files get there matters more on a small box than the records:

- headers are read without pixel data (large values deferred), one at a
  time: each is turned into its encoded directory records (spilled to an
  unnamed temporary file) and a few strings for the PDI pages, then
  dropped.  Nothing stays in memory per instance: its sort key, where its
  record lies and what is needed to copy it go into a table of a scratch
  database next to the file-set (:mod:`.scratch`), which also tells an
  instance listed twice; the table's key is the file-set's order, so the
  files are copied by walking it.  Each file's line of the manifest goes
  to the caller's ``manifest`` as the file is written (the media service
  streams it into its job store), or into a list otherwise.  Memory then
  follows the number of patients, studies and series, not of instances
  (a pydicom Dataset per record took 100 MB for 10 000 instances);
- an instance the profile allows is copied in 1 MiB chunks, hashed on the
  way and checked against the SHA-256 it had in the spool; one the profile
  does not allow is checked the same way, then converted frame by frame by
  the router's transcoder (:mod:`.convert`);
- the file-set is assembled in ``<out_dir>.partial`` and renamed to
  ``out_dir`` only when complete and synced, so ``out_dir`` either does not
  exist or holds a whole file-set.

Records need a few values that instances sometimes lack (Type 1 in the
directory records, Type 2 in the images: Study ID, Series Number, Instance
Number, dates...).  Those are filled in the DICOMDIR record only, never in
the instance, with values derived from the instance (see
:func:`_complete_header`), as ``dcmmkdir +I`` does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from .. import memory
from ..store.fsutil import fsync_dir
from . import pdi, scratch
from . import profiles as _profiles
from .convert import convert_to_explicit_le
from .dicomdir import Directory
from .errors import MediaError
from .profiles import Profile
from .verify import Meter, check_cancel, copy_file, remove_tree, sha256_file

LOGGER = logging.getLogger("dicombox.media.fileset")

#: Values larger than this stay on disk while headers are read (encapsulated
#: documents, big private blobs).
DEFER_SIZE = 256 * 1024

_FILESET_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True, slots=True)
class SourceInstance:
    """An instance of a job as the spool holds it (a job holds thousands: slots).

    ``key`` is the caller's own handle for it (the media service: its row
    id in the job), kept with the instance while the file-set is built and
    given back to ``current`` (:func:`build_fileset`).
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    key: int | None = None


@dataclass(frozen=True)
class MediaLabel:
    """What a medium says about itself (README.TXT, INDEX.HTM, the printed label)."""

    volume: int
    volumes: int
    job_id: str
    box_name: str
    institution: str
    created: datetime

    def volume_text(self, media: str = "cd") -> str:
        """``Disc 1 of 3`` (or ``USB medium 1 of 3``)."""
        word = "USB medium" if media == "usb" else "Disc"
        return f"{word} {self.volume} of {self.volumes}"


@dataclass(frozen=True)
class FileSetResult:
    """What was built: every file with its SHA-256 and size (what verification compares)."""

    #: (relative path with "/", sha256 hex, size), sorted; None when the lines
    #: went to the ``manifest`` callback of :func:`build_fileset` instead.
    files: list[tuple[str, str, int]] | None
    total_bytes: int
    profile: str
    fileset_id: str = ""
    instances: int = 0
    converted: int = 0          # written in another transfer syntax than received
    outside_profile: int = 0    # kept as received although the profile does not allow it
    patients: int = 0
    studies: int = 0


def size_on_medium(instance: SourceInstance, profile: str | Profile) -> int:
    """The bytes an instance will take in a file-set of ``profile`` (for spanning).

    Its spool size when the profile allows its transfer syntax; otherwise the
    size of its pixel data once decoded (from the header) plus its header.
    """
    prof = _profiles.get(profile) if isinstance(profile, str) else profile
    if prof.allows(instance.transfer_syntax_uid):
        return instance.size
    try:
        ds = dcmread(instance.path, stop_before_pixels=True, defer_size=DEFER_SIZE)
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return instance.size
    try:
        pixels = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                  * int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return instance.size
    return max(instance.size, pixels + 64 * 1024)


def fileset_id_from(text: str) -> str:
    """A valid File-set ID (CS; here A-Z, 0-9 and _, at most 16) from a job id."""
    out = "".join(c if c in _FILESET_ID_CHARS else "_" for c in text.upper())[:16]
    return out or "DICOMBOX"


def _empty(ds, keyword: str) -> bool:
    return keyword not in ds or ds[keyword].VM == 0


def _first(ds, *keywords: str) -> str:
    for kw in keywords:
        if not _empty(ds, kw):
            return str(ds[kw].value)
    return ""


@dataclass
class _Counters:
    """Numbers invented for records whose instances lack a Type 1 value."""

    studies: dict[str, str] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)       # series uid -> number
    series_per_study: dict[str, int] = field(default_factory=dict)
    instances_per_series: dict[str, int] = field(default_factory=dict)


def _complete_header(ds, created: datetime, counters: _Counters) -> None:
    """Fill what the directory records require and the instance lacks (record only)."""
    day = created.strftime("%Y%m%d")
    if _empty(ds, "PatientID"):
        name = str(ds.get("PatientName", "") or "")
        ds.PatientID = "NOID_" + hashlib.sha1(name.encode()).hexdigest()[:8].upper()
    study = str(ds.StudyInstanceUID)
    if _empty(ds, "StudyDate"):
        ds.StudyDate = _first(ds, "SeriesDate", "AcquisitionDate", "ContentDate",
                              "InstanceCreationDate") or day
    if _empty(ds, "StudyTime"):
        ds.StudyTime = _first(ds, "SeriesTime", "AcquisitionTime", "ContentTime",
                              "InstanceCreationTime") or "000000"
    if _empty(ds, "StudyID"):
        if study not in counters.studies:
            acc = _first(ds, "AccessionNumber")[:16].strip()
            counters.studies[study] = acc or f"S{len(counters.studies) + 1}"
        ds.StudyID = counters.studies[study]
    if _empty(ds, "Modality"):
        ds.Modality = "OT"
    series = str(ds.SeriesInstanceUID)
    if _empty(ds, "SeriesNumber"):
        if series not in counters.series:
            n = counters.series_per_study.get(study, 0) + 1
            counters.series_per_study[study] = n
            counters.series[series] = n
        ds.SeriesNumber = counters.series[series]
    if _empty(ds, "InstanceNumber"):
        n = counters.instances_per_series.get(series, 0) + 1
        counters.instances_per_series[series] = n
        ds.InstanceNumber = n
    # Leaf records of documents, presentation states, waveforms...
    if _empty(ds, "ContentDate"):
        ds.ContentDate = _first(ds, "InstanceCreationDate", "SeriesDate") or ds.StudyDate
    if _empty(ds, "ContentTime"):
        ds.ContentTime = _first(ds, "InstanceCreationTime", "SeriesTime") or ds.StudyTime
    if "ConceptNameCodeSequence" in ds or "ContentSequence" in ds:  # SR documents
        if _empty(ds, "CompletionFlag"):
            ds.CompletionFlag = "PARTIAL"
        if _empty(ds, "VerificationFlag"):
            ds.VerificationFlag = "UNVERIFIED"
    if "PresentationCreationDate" in ds:
        if _empty(ds, "PresentationCreationDate"):
            ds.PresentationCreationDate = ds.ContentDate
        if _empty(ds, "PresentationCreationTime"):
            ds.PresentationCreationTime = ds.ContentTime
        if _empty(ds, "ContentLabel"):
            ds.ContentLabel = "UNNAMED"
    if "EncapsulatedDocument" in ds and _empty(ds, "MIMETypeOfEncapsulatedDocument"):
        ds.MIMETypeOfEncapsulatedDocument = "application/octet-stream"


def _target_syntax(profile: Profile, stored: str, src: SourceInstance) -> str:
    """What the profile wants, unless nothing can decode ``stored`` (video, big endian).

    Such an instance is written as received: a disc that holds the video
    outside its profile serves the patient better than no disc.
    """
    from ..transcode import NOT_SUPPORTED, classify

    target = profile.target_syntax(stored)
    if target != stored and classify(stored, target).value == NOT_SUPPORTED:
        LOGGER.warning("%s: %s cannot be decoded; written as received, outside %s",
                       src.path.name, stored, profile.name)
        return stored
    return target


def _summarise(ds, patients: dict[str, pdi.PatientInfo]) -> None:
    pid = str(ds.PatientID)
    p = patients.get(pid)
    if p is None:
        name = ds.get("PatientName", "")
        p = patients[pid] = pdi.PatientInfo(
            patient_id=pid, name=pdi.display_name(name), ascii_name=pdi.ascii_name(name),
            birth_date=str(ds.get("PatientBirthDate", "") or ""),
            sex=str(ds.get("PatientSex", "") or ""))
    uid = str(ds.StudyInstanceUID)
    s = p.studies.get(uid)
    if s is None:
        s = p.studies[uid] = pdi.StudyInfo(
            uid=uid, date=str(ds.StudyDate), time=str(ds.StudyTime),
            description=str(ds.get("StudyDescription", "") or ""),
            accession=str(ds.get("AccessionNumber", "") or ""), study_id=str(ds.StudyID),
            referring=str(ds.get("ReferringPhysicianName", "") or ""))
    suid = str(ds.SeriesInstanceUID)
    se = s.series.get(suid)
    if se is None:
        se = s.series[suid] = pdi.SeriesInfo(
            number=str(ds.SeriesNumber), modality=str(ds.Modality),
            description=str(ds.get("SeriesDescription", "") or ""))
    se.instances += 1


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(number) else number


def _read_header(src: SourceInstance):
    try:
        ds = dcmread(src.path, stop_before_pixels=True, defer_size=DEFER_SIZE)
    except FileNotFoundError:
        raise MediaError("source-changed", f"spool file {src.path} is missing") from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise MediaError("build-failed", f"cannot read {src.path.name}: {exc}") from exc
    if "SOPInstanceUID" not in ds or str(ds.SOPInstanceUID) != src.sop_instance_uid:
        raise MediaError("source-changed",
                         f"spool file {src.path.name} does not hold instance "
                         f"{src.sop_instance_uid}")
    if _empty(ds, "StudyInstanceUID") or _empty(ds, "SeriesInstanceUID"):
        raise MediaError("build-failed",
                         f"{src.path.name} has no Study or Series Instance UID")
    return ds


#: The build's table of instances (scratch database).  Its key is the order of
#: the file-set: patients and studies as they first appear, series by number,
#: instances by number (the SOP Instance UID makes it unique); ``uid`` alone is
#: unique too (an instance listed twice is written once).
_ENTRIES = (
    "CREATE TABLE entries (patient INTEGER NOT NULL, study INTEGER NOT NULL, "
    "series_number REAL NOT NULL, series INTEGER NOT NULL, instance_number REAL NOT NULL, "
    "uid TEXT NOT NULL, node INTEGER NOT NULL, pos INTEGER NOT NULL, length INTEGER NOT NULL, "
    "prefix TEXT NOT NULL, convert INTEGER NOT NULL, path TEXT NOT NULL, "
    "sop_class_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL, "
    "series_instance_uid TEXT NOT NULL, patient_id TEXT NOT NULL, "
    "transfer_syntax_uid TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, "
    "key INTEGER, PRIMARY KEY (patient, study, series_number, series, instance_number, uid)) "
    "WITHOUT ROWID",
    "CREATE UNIQUE INDEX entries_uid ON entries (uid)",
)
_INSERT = "INSERT INTO entries VALUES (" + ", ".join("?" * 20) + ")"
_PLACEMENT = ("SELECT node, pos, length, prefix, convert, path, uid, sop_class_uid, "
              "study_instance_uid, series_instance_uid, patient_id, transfer_syntax_uid, "
              "size, sha256, key FROM entries "
              "ORDER BY patient, study, series_number, series, instance_number, uid")


def _prepare(instances: Iterable[SourceInstance], directory: Directory, db, profile: Profile,
             created: datetime, cancel: threading.Event | None
             ) -> tuple[dict[str, pdi.PatientInfo], int, int]:
    """Read each header once: directory records, target syntax, summary, order.

    Puts one row per instance to write into the ``entries`` table of ``db``
    (:data:`_ENTRIES`: its place in the file-set's order, its leaf record,
    whether it is converted, and the instance itself) and returns the
    summary for the PDI pages, the number of instances kept outside their
    profile, and the number of rows.  The header itself is dropped as soon
    as it was used.
    """
    for statement in _ENTRIES:
        db.execute(statement)
    counters = _Counters()
    patients: dict[str, pdi.PatientInfo] = {}
    order: dict[str, int] = {}
    outside = 0
    count = 0
    for index, src in enumerate(instances):
        check_cancel(cancel)
        memory.release_every(index)
        if db.execute("SELECT 1 FROM entries WHERE uid = ?",
                      (src.sop_instance_uid,)).fetchone() is not None:
            LOGGER.info("instance %s is twice in the job; written once", src.sop_instance_uid)
            continue
        ds = _read_header(src)
        _complete_header(ds, created, counters)
        stored = str(ds.file_meta.TransferSyntaxUID)
        target = _target_syntax(profile, stored, src)
        ds.file_meta.TransferSyntaxUID = target
        try:
            node, pos, length, prefix = directory.add(ds)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise MediaError("build-failed",
                             f"{src.path.name}: no DICOMDIR record can be made: {exc}") from exc
        _summarise(ds, patients)
        db.execute(_INSERT, (
            order.setdefault("P" + str(ds.PatientID), len(order)),
            order.setdefault("S" + str(ds.StudyInstanceUID), len(order)),
            _number(ds.SeriesNumber),
            order.setdefault("E" + str(ds.SeriesInstanceUID), len(order)),
            _number(ds.get("InstanceNumber")), src.sop_instance_uid,
            node, pos, length, prefix, target != stored,
            str(src.path), src.sop_class_uid, src.study_instance_uid, src.series_instance_uid,
            src.patient_id, src.transfer_syntax_uid, src.size, src.sha256, src.key))
        count += 1
        outside += target == stored and not profile.allows(stored)
        del ds
    return patients, outside, count


def _place(src: SourceInstance, converted: bool, dst: Path, meter: Meter) -> tuple[str, int]:
    """Write one instance to ``dst``: copy as stored, or convert.  Returns sha and size."""
    try:
        if not converted:
            sha, size = copy_file(src.path, dst, meter, fsync=False)
            if sha != src.sha256 or size != src.size:
                raise MediaError("source-changed",
                                 f"spool file {src.path.name} changed since it was received "
                                 "(checksum differs)")
            return sha, size
        sha, size = sha256_file(src.path)
        if sha != src.sha256:
            raise MediaError("source-changed",
                             f"spool file {src.path.name} changed since it was received "
                             "(checksum differs)")
        convert_to_explicit_le(src.path, dst)
        meter.add(src.size)
        return sha256_file(dst)
    except FileNotFoundError:
        raise MediaError("source-changed", f"spool file {src.path} is missing") from None


def build_fileset(instances: Iterable[SourceInstance], out_dir: Path, *, fileset_id: str,
                  profile: str, label: MediaLabel,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None,
                  replace: bool = False,
                  manifest: Callable[[str, str, int], None] | None = None,
                  current: Callable[[SourceInstance], SourceInstance] | None = None
                  ) -> FileSetResult:
    """Write DICOMDIR, the DICOM files, README.TXT, INDEX.HTM and IHE_PDI/ under ``out_dir``.

    ``instances`` is read once, in any order.  ``out_dir`` must not exist
    (or be empty), unless ``replace`` is true (a step that restarts after a
    crash rebuilds its file-set).  ``progress`` receives (bytes of instances
    done, bytes of instances in total).  ``manifest``, when given, receives
    the line (relative path, SHA-256, size) of every file as it is written,
    and the result's ``files`` is then None.  ``current``, when given, is
    asked for each instance again just before its file is copied (the
    instance as the spool holds it then: a resent instance's earlier copy
    may have moved meanwhile).  Raises :class:`MediaError`
    (``build-failed``, ``source-changed``, ``cancelled``) and leaves nothing
    behind when it does.
    """
    out_dir = Path(out_dir)
    prof = _profiles.get(profile)
    fsid = fileset_id_from(fileset_id)
    if isinstance(instances, Sized) and not len(instances):
        raise MediaError("build-failed", "the job holds no instances")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not replace:
            raise MediaError("build-failed", f"{out_dir} is not empty")
        remove_tree(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        remove_tree(partial)
    try:
        return _build(instances, out_dir, partial, fsid, prof, label, progress, cancel,
                      manifest, current)
    except BaseException:
        remove_tree(partial, ignore_errors=True)
        raise


def _build(instances: Iterable[SourceInstance], out_dir: Path, partial: Path, fsid: str,
           prof: Profile, label: MediaLabel, progress, cancel, manifest, current
           ) -> FileSetResult:
    partial.mkdir(parents=True)
    files: list[tuple[str, str, int]] | None = None
    if manifest is None:
        files = []
        manifest = lambda *line: files.append(line)  # noqa: E731
    total_bytes = count = converted = 0
    # The encoded directory records wait in an unnamed file next to the
    # file-set (never in the listing, gone when closed), the table of
    # instances in a scratch database there (removed before the file-set is
    # complete), not in memory.
    with tempfile.TemporaryFile(dir=partial) as spill, \
            scratch.scratch_db(partial, ".build-") as db:
        directory = Directory(spill, db)
        patients, outside, count = _prepare(instances, directory, db, prof, label.created,
                                            cancel)
        if not count:
            raise MediaError("build-failed", "the job holds no instances")
        (planned,) = db.execute("SELECT SUM(size) FROM entries").fetchone()
        meter = Meter(planned, progress, cancel)
        folder = None
        for i, (node, pos, length, prefix, convert, *row) in enumerate(db.execute(_PLACEMENT)):
            memory.release_every(i)
            try:
                rel = directory.attach((node, pos, length, prefix))
            except ValueError as exc:
                raise MediaError("build-failed", f"too many instances: {exc}") from exc
            src = SourceInstance(Path(row[0]), *row[1:])
            if current is not None:
                src = current(src)
            dst = partial / rel
            try:
                if dst.parent != folder:
                    folder = dst.parent
                    folder.mkdir(parents=True, exist_ok=True)
                sha, size = _place(src, convert, dst, meter)
            except OSError as exc:
                raise MediaError("build-failed", f"cannot write {rel}: {exc.strerror}") from exc
            converted += convert
            total_bytes += size
            manifest(rel, sha, size)
        try:
            directory.write(partial / "DICOMDIR", fsid)
        except (OSError, ValueError) as exc:
            raise MediaError("build-failed", f"cannot write the DICOMDIR: {exc}") from exc
        del directory
    media = prof.media
    plist = list(patients.values())
    extras = pdi.write_extras(partial, plist, volume_text=label.volume_text(media), label=label,
                              profile=prof, fileset_id=fsid, instances=count)
    for path in [partial / "DICOMDIR", *extras]:
        sha, size = sha256_file(path)
        total_bytes += size
        manifest("/".join(path.relative_to(partial).parts), sha, size)
    if files is not None:
        files.sort()
    check_cancel(cancel)
    # One sync for the whole tree is much cheaper than an fsync per file on
    # an SD card, and the rename below publishes only a durable file-set.
    os.sync()
    os.rename(partial, out_dir)
    fsync_dir(out_dir.parent)
    meter.finish()
    return FileSetResult(
        files=files, total_bytes=total_bytes, profile=prof.name,
        fileset_id=fsid, instances=count, converted=converted,
        outside_profile=outside, patients=len(plist),
        studies=sum(len(p.studies) for p in plist))
