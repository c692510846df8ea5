"""Synthetic but valid benchmark data, generated once into ``bench/data/``.

Every data set is a folder of Part 10 files (Explicit VR Little Endian unless
said otherwise) plus a ``manifest.json`` recording how it was made; a folder
whose manifest matches the requested parameters is reused, so a second
``make bench`` does not regenerate gigabytes.

Pixel data are a smooth gradient with a little noise (it compresses like a
real image) and are written frame by frame, so even the 1 GB multi-frame
instance is generated in constant memory.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
CR = "1.2.840.10008.5.1.4.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

#: Bumped whenever the generator's output changes, so cached data is rebuilt.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Spec:
    """What one data set is: ``kind`` plus its sizes."""

    kind: str  # ct | cr | tiny | multiframe | jpeg
    count: int
    rows: int
    cols: int
    frames: int = 1
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.kind


def full_specs() -> dict[str, Spec]:
    """The data sets of a real run (issue targets: CT >= 300 slices 512x512x16,
    CR 10 images >= 2500x3000x16, 2000 tiny instances, a 1 GB multi-frame)."""
    return {
        "ct": Spec("ct", 300, 512, 512, label="CT 300x512x512"),
        "cr": Spec("cr", 10, 3000, 2500, label="CR 10x3000x2500"),
        "tiny": Spec("tiny", 2000, 16, 16, label="2000 tiny"),
        "multiframe": Spec("multiframe", 1, 512, 512, frames=2048,
                           label="multi-frame 1 GiB"),
        "jpeg": Spec("jpeg", 20, 512, 512, label="JPEG lossless 20x512x512"),
        "fileset": Spec("tiny", 10000, 16, 16, label="10000 tiny (DICOMDIR)"),
    }


def smoke_specs() -> dict[str, Spec]:
    """Tiny versions of every data set, for the test suite's smoke run."""
    return {
        "ct": Spec("ct", 4, 32, 32, label="CT 4x32x32"),
        "cr": Spec("cr", 2, 64, 48, label="CR 2x64x48"),
        "tiny": Spec("tiny", 10, 16, 16, label="10 tiny"),
        "multiframe": Spec("multiframe", 1, 32, 32, frames=16, label="multi-frame 32 KiB"),
        "jpeg": Spec("jpeg", 2, 32, 32, label="JPEG lossless 2x32x32"),
        "fileset": Spec("tiny", 20, 16, 16, label="20 tiny (DICOMDIR)"),
    }


# -- writing -------------------------------------------------------------------


def _base(sop_class: str, study: str, series: str, modality: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = "Bench^Patient"
    ds.PatientID = "BENCH001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "BENCH" + study[-6:].replace(".", "")
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Manufacturer = "dicombox bench"
    ds.InstitutionName = "Bench Hospital"
    ds.StudyDescription = f"{modality} benchmark study"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ["L", "F"]
    return ds


def _pixel_module(ds: Dataset, rows: int, cols: int, bits: int, stored: int) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0


def _frame(rows: int, cols: int, bits: int, stored: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:rows, 0:cols]
    img = (x * 3 + y * 2 + seed * 7) % (1 << stored)
    img = (img + rng.integers(0, 8, size=(rows, cols))) % (1 << stored)
    return img.astype(np.uint16 if bits == 16 else np.uint8).tobytes()


def _meta(ds: Dataset) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _save(ds: Dataset, path: Path) -> None:
    _meta(ds)
    dcmwrite(path, ds, enforce_file_format=True)


def _write_ct(out: Path, spec: Spec) -> None:
    study, series = generate_uid(), generate_uid()
    frame_of_ref = generate_uid()
    for i in range(spec.count):
        ds = _base(CT, study, series, "CT", i + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PositionReferenceIndicator = ""
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        _pixel_module(ds, spec.rows, spec.cols, 16, 12)
        ds.PixelData = _frame(spec.rows, spec.cols, 16, 12, i)
        _save(ds, out / f"CT{i:05d}.dcm")


def _write_cr(out: Path, spec: Spec) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(spec.count):
        ds = _base(CR, study, series, "CR", i + 1)
        ds.ViewPosition = "PA"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        _pixel_module(ds, spec.rows, spec.cols, 16, 14)
        ds.PixelData = _frame(spec.rows, spec.cols, 16, 14, i)
        _save(ds, out / f"CR{i:05d}.dcm")


def _write_tiny(out: Path, spec: Spec) -> None:
    study, series = generate_uid(), generate_uid()
    template = _base(SC, study, series, "OT", 1)
    template.ConversionType = "WSD"
    _pixel_module(template, spec.rows, spec.cols, 8, 8)
    template.PixelData = _frame(spec.rows, spec.cols, 8, 8, 0)
    for i in range(spec.count):
        template.SOPInstanceUID = generate_uid()
        template.InstanceNumber = i + 1
        _save(template, out / f"SC{i:05d}.dcm")


def _write_multiframe(out: Path, spec: Spec) -> None:
    """One multi-frame instance, its Pixel Data written frame by frame."""
    ds = _base(MF_WORD_SC, generate_uid(), generate_uid(), "OT", 1)
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = spec.frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    _pixel_module(ds, spec.rows, spec.cols, 16, 12)
    _meta(ds)
    frame_bytes = spec.rows * spec.cols * 2
    length = frame_bytes * spec.frames
    if length >= 0xFFFFFFFF:
        raise ValueError("multi-frame pixel data must stay below 4 GiB")
    path = out / "MF00000.dcm"
    with open(path, "wb") as f:
        dcmwrite(f, ds, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved, 4-byte length
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        # A handful of distinct frames, repeated: generation stays fast.
        frames = [_frame(spec.rows, spec.cols, 16, 12, s) for s in range(8)]
        for i in range(spec.frames):
            f.write(frames[i % len(frames)])


def _write_jpeg(out: Path, spec: Spec) -> None:
    """CT-like slices compressed to JPEG Lossless SV1 by DCMTK's dcmcjpeg."""
    raw = out / "raw"
    raw.mkdir()
    _write_ct(raw, spec)
    for src in sorted(raw.iterdir()):
        subprocess.run(["dcmcjpeg", "+e1", str(src), str(out / src.name)], check=True,
                       capture_output=True)
    shutil.rmtree(raw)


WRITERS = {"ct": _write_ct, "cr": _write_cr, "tiny": _write_tiny,
           "multiframe": _write_multiframe, "jpeg": _write_jpeg}


def ensure(root: Path, key: str, spec: Spec, log=print) -> Path:
    """The folder of data set ``key``, generated unless a matching one exists."""
    folder = Path(root) / key
    manifest = folder / "manifest.json"
    wanted = {"generator": GENERATOR_VERSION, **asdict(spec)}
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()) == wanted:
                return folder
        except ValueError:
            pass
    if folder.exists():
        shutil.rmtree(folder)
    files = folder / "files"
    files.mkdir(parents=True)
    log(f"generating {spec.name} into {folder}")
    WRITERS[spec.kind](files, spec)
    manifest.write_text(json.dumps(wanted, indent=1))
    return folder


def files_of(folder: Path) -> list[Path]:
    return sorted((Path(folder) / "files").glob("*.dcm"))


def total_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_of(folder))
