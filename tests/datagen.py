"""Synthetic but valid DICOM test data, and compressed copies made by DCMTK."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
CR = "1.2.840.10008.5.1.4.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _base(sop_class: str, study: str, series: str, patient=("Doe^John", "PID001"),
          modality="CT", number=1, charset: str | None = None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC" + study[-6:].replace(".", "")
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Manufacturer = "dicombox tests"
    ds.InstitutionName = "Test Hospital"
    ds.StudyDescription = f"{modality} test study"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    return ds


def _image(ds: Dataset, rows: int, cols: int, bits: int = 16, seed: int = 0,
           stored: int | None = None) -> None:
    stored = stored or (12 if bits == 16 else 8)
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if bits == 16 else np.uint8
    # A smooth gradient with noise compresses like a real image.
    y, x = np.mgrid[0:rows, 0:cols]
    img = ((x + y + seed) % (1 << stored)).astype(np.int64)
    img = (img + rng.integers(0, 8, size=img.shape)) % (1 << stored)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = img.astype(dtype).tobytes()


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_series(directory: Path, count: int, rows: int = 64, cols: int = 64,
              patient=("Doe^John", "PID001"), study: str | None = None,
              charset: str | None = None, prefix: str = "CT") -> list[Path]:
    study = study or generate_uid()
    series = generate_uid()
    out = []
    for i in range(count):
        ds = _base(CT, study, series, patient, "CT", i + 1, charset)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.FrameOfReferenceUID = study + ".9" if len(study) < 62 else generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        _image(ds, rows, cols, 16, seed=i)
        out.append(_save(ds, Path(directory) / f"{prefix}{i:05d}.dcm"))
    return out


def cr_image(directory: Path, rows: int = 256, cols: int = 200, study: str | None = None,
             patient=("Roe^Jane", "PID002")) -> Path:
    study = study or generate_uid()
    ds = _base(CR, study, generate_uid(), patient, "CR")
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _image(ds, rows, cols, 16, seed=7)
    return _save(ds, Path(directory) / "CR.dcm")


def sr_document(directory: Path, study: str | None = None,
                patient=("Roe^Jane", "PID002")) -> Path:
    study = study or generate_uid()
    ds = _base(BASIC_TEXT_SR, study, generate_uid(), patient, "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    c2 = Dataset()
    c2.CodeValue, c2.CodingSchemeDesignator, c2.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([c2])
    item.TextValue = "No abnormality detected."
    ds.ContentSequence = Sequence([item])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    return _save(ds, Path(directory) / "SR.dcm")


def tiny_instances(directory: Path, count: int, study: str | None = None) -> list[Path]:
    study = study or generate_uid()
    series = generate_uid()
    out = []
    for i in range(count):
        ds = _base(SC, study, series, ("Tiny^Test", "PID003"), "OT", i + 1)
        ds.ConversionType = "WSD"
        _image(ds, 16, 16, 8, seed=i)
        out.append(_save(ds, Path(directory) / f"SC{i:05d}.dcm"))
    return out


def secondary_capture_16(path: Path, study: str, series: str, patient: tuple[str, str],
                         series_number: int, number: int, fill: int) -> Dataset:
    """One 16x16 8-bit Secondary Capture of ``fill`` bytes, written fast (no
    numpy, a few attributes): for tests that need thousands of instances."""
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = patient
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.SeriesNumber, ds.InstanceNumber = series_number, number
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes([fill % 256]) * 256
    _save(ds, path)
    return ds


#: name -> (command builder, transfer syntax UID)
COMPRESSORS = {
    "jpeg-lossless": (lambda s, d: ["dcmcjpeg", "+e1", s, d], "1.2.840.10008.1.2.4.70"),
    "jpeg-baseline": (lambda s, d: ["dcmcjpeg", "+eb", s, d], "1.2.840.10008.1.2.4.50"),
    "jpeg-ls": (lambda s, d: ["dcmcjpls", "+el", s, d], "1.2.840.10008.1.2.4.80"),
    "rle": (lambda s, d: ["dcmcrle", s, d], "1.2.840.10008.1.2.5"),
}


def compress(src: Path, dst: Path, kind: str) -> Path:
    """A compressed copy of ``src``: DCMTK for JPEG/JPEG-LS/RLE, pydicom for J2K."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind == "j2k-lossless":
        from pydicom import dcmread
        from pydicom.uid import JPEG2000Lossless
        ds = dcmread(src)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(dst, enforce_file_format=True)
        return dst
    builder, _ = COMPRESSORS[kind]
    subprocess.run([str(x) for x in builder(str(src), str(dst))], check=True,
                   capture_output=True)
    return dst


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM"
    # (0002,0000) group length: UL, explicit VR little endian
    import struct
    assert data[132:136] == b"\x02\x00\x00\x00"
    length = struct.unpack("<I", data[140:144])[0]
    return data[144 + length:]
