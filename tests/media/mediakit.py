"""Test data and independent checks for the media pipeline (file-sets, ISO images, writers).

Every check here is done by a program that is not ours: dicom3tools
(dciodvfy, dcdirdmp, dcentvfy), DCMTK (dcmmkdir, dcmdump), genisoimage's
isoinfo, xorriso, mtools and dosfstools.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicombox.media.fileset import MediaLabel, SourceInstance  # noqa: E402

import datagen  # noqa: E402

JAPANESE = ("Yamada^Tarou=山田^太郎=やまだ^たろう", "PIDJP")
LATIN1 = ("Müller^Hans", "PIDDE")
UTF8 = ("Ωμέγα^Δοκιμή", "PIDGR")

KO = "1.2.840.10008.5.1.4.1.1.88.59"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"

FILE_ID = re.compile(r"^[A-Z0-9_]{1,8}$")


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers: {', '.join(missing)} (run scripts/install-peers.sh)")


def run(*argv, check: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          errors="replace",
                          check=check, timeout=300, **kw)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def source(path: Path) -> SourceInstance:
    """A SourceInstance for a file, as the spool would describe it."""
    ds = dcmread(path, stop_before_pixels=True)
    return SourceInstance(Path(path), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                          str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                          str(ds.get("PatientID", "")), str(ds.file_meta.TransferSyntaxUID),
                          path.stat().st_size, sha256(path))


def label(volume: int = 1, volumes: int = 1, job: str = "20260101-0001") -> MediaLabel:
    return MediaLabel(volume, volumes, job, "box-7", "Test Hospital",
                      datetime(2026, 1, 1, 12, 30))


_STUDY_LEVEL = ("StudyDescription", "AccessionNumber", "StudyDate", "StudyTime", "StudyID",
                "ReferringPhysicianName", "PatientBirthDate", "PatientSex")


def _document(sop_class: str, study: str, patient, modality: str, like: Path | None,
              charset: str | None = None) -> Dataset:
    """A document in the study of ``like``, with the same study-level attributes."""
    ds = datagen._base(sop_class, study, generate_uid(), patient, modality, 1, charset)
    if like is not None:
        ref = dcmread(like, stop_before_pixels=True)
        for kw in _STUDY_LEVEL:
            if kw in ref:
                setattr(ds, kw, ref.data_element(kw).value)
    return ds


def key_object(directory: Path, study: str, patient, refs: list[Path],
               charset: str | None = None) -> Path:
    """A Key Object Selection document flagging ``refs`` (same study)."""
    ds = _document(KO, study, patient, "KO", refs[0], charset)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113000", "DCM", \
        "Of Interest"
    ds.ConceptNameCodeSequence = Sequence([code])
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    tmpl = Dataset()
    tmpl.MappingResource, tmpl.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([tmpl])
    items = []
    for ref in refs:
        r = dcmread(ref, stop_before_pixels=True)
        sop = Dataset()
        sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = r.SOPClassUID, \
            r.SOPInstanceUID
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        item.ReferencedSOPSequence = Sequence([sop])
        items.append(item)
    ds.ContentSequence = Sequence(items)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence()
    return datagen._save(ds, Path(directory) / "KO.dcm")


def presentation_state(directory: Path, study: str, patient, ref: Path,
                       charset: str | None = None) -> Path:
    """A Grayscale Softcopy Presentation State referencing one image."""
    ds = _document(GSPS, study, patient, "PR", ref, charset)
    r = dcmread(ref, stop_before_pixels=True)
    ds.ContentLabel = "WINDOW"
    ds.ContentDescription = "soft tissue window"
    ds.ContentCreatorName = "Tech^One"
    ds.PresentationCreationDate, ds.PresentationCreationTime = "20260101", "121500"
    img = Dataset()
    img.ReferencedSOPClassUID, img.ReferencedSOPInstanceUID = r.SOPClassUID, r.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = r.SeriesInstanceUID
    series.ReferencedImageSequence = Sequence([img])
    ds.ReferencedSeriesSequence = Sequence([series])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40, 400
    ds.SoftcopyVOILUTSequence = Sequence([voi])
    ds.PresentationLUTShape = "IDENTITY"
    return datagen._save(ds, Path(directory) / "PR.dcm")


def encapsulated_pdf(directory: Path, study: str, patient, like: Path,
                     charset: str | None = None) -> Path:
    ds = _document(PDF, study, patient, "DOC", like, charset)
    ds.ConversionType = "WSD"
    ds.DocumentTitle = "Referral letter"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = Sequence()
    pdf = (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n" + b"x" * 5000 + b"\n%%EOF\n")
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return datagen._save(ds, Path(directory) / "PDF.dcm")


def job_files(directory: Path) -> dict[str, list[Path]]:
    """Three patients (ISO 2022 IR 87, ISO_IR 100 compressed, ISO_IR 192) and documents.

    Returns {"jp": [...], "de": [...], "gr": [...], "docs": [...]}.
    """
    directory = Path(directory)
    jp = datagen.ct_series(directory / "jp", 4, patient=JAPANESE,
                           charset="\\ISO 2022 IR 87", prefix="JP")
    study_jp = str(dcmread(jp[0], stop_before_pixels=True).StudyInstanceUID)
    plain = datagen.ct_series(directory / "de0", 3, patient=LATIN1, charset="ISO_IR 100",
                              prefix="DE")
    de = [datagen.compress(p, directory / "de" / p.name, "jpeg-lossless") for p in plain]
    gr = datagen.ct_series(directory / "gr", 2, patient=UTF8, charset="ISO_IR 192", prefix="GR")
    docs = [
        datagen.sr_document(directory / "sr"),
        key_object(directory / "ko", study_jp, JAPANESE, jp[:2], "\\ISO 2022 IR 87"),
        presentation_state(directory / "pr", study_jp, JAPANESE, jp[0], "\\ISO 2022 IR 87"),
        encapsulated_pdf(directory / "pdf", study_jp, JAPANESE, jp[0], "\\ISO 2022 IR 87"),
    ]
    return {"jp": jp, "de": de, "gr": gr, "docs": docs}


# -- independent checks ---------------------------------------------------------------------

def check_dicomdir(root: Path) -> str:
    """dciodvfy and dcdirdmp on the DICOMDIR, dcentvfy over the instances; no errors.

    Returns dcdirdmp's listing.
    """
    require("dciodvfy", "dcdirdmp", "dcentvfy")
    dicomdir = Path(root) / "DICOMDIR"
    v = run("dciodvfy", dicomdir)
    assert v.returncode == 0 and "Error" not in v.stderr + v.stdout, v.stderr + v.stdout
    assert "Warning" not in v.stderr + v.stdout, v.stderr + v.stdout
    d = run("dcdirdmp", dicomdir)   # it lists on stderr
    listing = d.stderr + d.stdout
    assert d.returncode == 0 and "rror" not in listing and "PATIENT" in listing, listing
    instances = [str(p.relative_to(root)) for p in sorted(Path(root).rglob("*"))
                 if p.is_file() and p.parts[len(Path(root).parts)].startswith("PT")]
    e = run("dcentvfy", *instances, cwd=root)
    assert e.returncode == 0 and "Error" not in e.stderr + e.stdout, e.stderr + e.stdout
    return listing


def dcmmkdir(root: Path, profile_flag: str, out: Path) -> tuple[bool, str]:
    """Let DCMTK build its own DICOMDIR of the file-set's files under a profile.

    Returns (every file accepted, DCMTK's messages).
    """
    require("dcmmkdir")
    r = run("dcmmkdir", "+D", out, profile_flag, *referenced_files(root), cwd=root)
    messages = r.stderr + r.stdout
    ok = r.returncode == 0 and "E:" not in messages and "cannot be added" not in messages
    return ok, messages


def referenced_files(root: Path) -> list[str]:
    """The Referenced File IDs of the DICOMDIR (as relative paths with /)."""
    ds = dcmread(Path(root) / "DICOMDIR")
    out = []
    for rec in ds.DirectoryRecordSequence:
        if "ReferencedFileID" in rec:
            value = rec.ReferencedFileID
            parts = [value] if isinstance(value, str) else list(value)
            out.append("/".join(parts))
    return out


def files_by_uid(root: Path) -> dict[str, str]:
    """SOP Instance UID -> Referenced File ID (relative path with /), from the DICOMDIR."""
    ds = dcmread(Path(root) / "DICOMDIR")
    out = {}
    for rec in ds.DirectoryRecordSequence:
        if "ReferencedFileID" in rec:
            value = rec.ReferencedFileID
            parts = [value] if isinstance(value, str) else list(value)
            out[str(rec.ReferencedSOPInstanceUIDInFile)] = "/".join(parts)
    return out


def check_file_ids(root: Path) -> None:
    for rel in referenced_files(root):
        parts = rel.split("/")
        assert len(parts) <= 8, rel
        assert all(FILE_ID.match(p) for p in parts), rel


def tree_checksums(root: Path) -> dict[str, str]:
    return {"/".join(p.relative_to(root).parts): sha256(p)
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def extract_iso(image: Path | str, out: Path) -> dict[str, str]:
    """Extract an ISO (file or pseudo-drive) with xorriso -osirrox; return checksums."""
    require("xorriso")
    out.mkdir(parents=True, exist_ok=True)
    r = run("xorriso", "-osirrox", "on", "-indev", image, "-extract", "/", out)
    assert r.returncode == 0, r.stderr
    for p in out.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return tree_checksums(out)


def iso_listing_names(image: Path, *flags: str) -> list[str]:
    """Every name isoinfo lists (ISO 9660 tree, or Joliet/Rock Ridge with flags)."""
    require("isoinfo")
    r = run("isoinfo", *flags, "-l", "-i", image, check=True)
    names = []
    for line in r.stdout.splitlines():
        m = re.match(r"^[d-][-rwx]{9}.*\]\s+(.*?)\s*$", line)
        if m and m.group(1) not in (".", ".."):
            names.append(m.group(1))
    return names
