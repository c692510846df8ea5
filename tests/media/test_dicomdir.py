"""The DICOMDIR written record by record is what pydicom's FileSet makes of the same tree.

pydicom loads the DICOMDIR following every offset (a wrong one leaves an
orphan, which raises) and encodes it again from its own record tree; the
bytes must be ours, byte for byte.  dicom3tools checks the same DICOMDIR.
"""

from __future__ import annotations

import random
from pathlib import Path

import mediakit as K
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from dicombox.media.dicomdir import component
from dicombox.media.fileset import build_fileset

import datagen

PALETTE = "1.2.840.10008.5.1.4.39.1"


def _palette(directory: Path, study: str) -> Path:
    """A Color Palette instance: a single-level (root) PALETTE record."""
    ds = datagen._base(PALETTE, study, generate_uid(), ("Doe^John", "PID001"), "OT")
    ds.ContentLabel = "HOT_IRON"
    ds.ContentDescription = "hot iron"
    return datagen._save(ds, Path(directory) / "PA.dcm")


def _pydicom_encoding(dicomdir: Path) -> bytes:
    fs = FileSet()
    fs.load(dicomdir, raise_orphans=True)
    out = DicomBytesIO()
    fs._write_dicomdir(out, copy_safe=True)
    return out.getvalue()


def test_the_dicomdir_is_pydicoms_encoding_of_its_tree(tmp_path):
    study = generate_uid()
    a = datagen.ct_series(tmp_path / "a", 3, study=study)
    b = datagen.ct_series(tmp_path / "b", 3, study=study)
    # Series numbers that disagree within a series, instances in any order.
    for i, path in enumerate(a + b):
        ds = dcmread(path)
        ds.SeriesNumber = [3, 1, 2][i % 3]
        ds.save_as(path)
    other = datagen.ct_series(tmp_path / "c", 2, patient=("Roe^Jane", "PID002"),
                              charset="ISO_IR 100")
    paths = [*a, *b, *other, datagen.sr_document(tmp_path / "sr"),
             datagen.cr_image(tmp_path / "cr"), _palette(tmp_path / "pa", study)]
    random.Random(7).shuffle(paths)
    instances = [K.source(p) for p in paths]
    result = build_fileset(instances, tmp_path / "fs", fileset_id="TREE", profile="STD-GEN-CD",
                           label=K.label())
    dicomdir = tmp_path / "fs" / "DICOMDIR"
    assert dicomdir.read_bytes() == _pydicom_encoding(dicomdir)
    records = dcmread(dicomdir).DirectoryRecordSequence
    kinds = [r.DirectoryRecordType for r in records]
    assert kinds.count("PATIENT") == 2 and kinds.count("PALETTE") == 1
    assert kinds.count("IMAGE") == 9 and kinds.count("SR DOCUMENT") == 1
    by_uid = K.files_by_uid(tmp_path / "fs")
    assert set(by_uid) == {i.sop_instance_uid for i in instances}
    assert result.instances == len(instances)
    assert all((tmp_path / "fs" / rel).is_file() for rel in by_uid.values())
    [palette] = [rel for rel in by_uid.values() if rel.startswith("PA")]
    assert "/" not in palette     # a root record, numbered among the PATIENT records


def test_a_large_dicomdir_keeps_its_offsets(tmp_path):
    paths = datagen.tiny_instances(tmp_path / "src", 300)
    instances = [K.source(p) for p in paths[::-1]]
    build_fileset(instances, tmp_path / "fs", fileset_id="LARGE", profile="STD-GEN-CD",
                  label=K.label())
    dicomdir = tmp_path / "fs" / "DICOMDIR"
    assert dicomdir.read_bytes() == _pydicom_encoding(dicomdir)
    K.check_dicomdir(tmp_path / "fs")


def test_file_id_components():
    assert component("IM", 0) == "IM000000"
    assert component("IM", 12) == "IM000012"
    assert component("PT", 999_999) == "PT999999"
    assert component("IM", 35, alphanumeric=True) == "IM000010"
    with pytest.raises(ValueError):
        component("IM", 1_000_000)
