"""The conversion matrix (Table N.5-9) and conversions, checked against the source pixels."""

import tracemalloc

import numpy as np
import pytest
from fwdkit import multiframe
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicombox import transcode as tc
from dicombox.uids import TRANSFER_SYNTAXES

from datagen import compress, ct_series, sr_document
from helpers import require

BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
MPEG2 = "1.2.840.10008.1.2.4.100"


def test_matrix_follows_the_rules_of_seed_table():
    assert tc.classify(JPEG_LOSSLESS, tc.EXPLICIT_LE) == (tc.SUPPORTED, tc.ALWAYS)
    assert tc.classify(tc.EXPLICIT_LE, tc.J2K) == (tc.NEW_UID, tc.IF_LOSSY)
    assert tc.classify(BASELINE, tc.EXPLICIT_LE) == (tc.SUPPORTED, tc.IF_DECOMPRESS_LOSSY)
    assert tc.classify(BASELINE, tc.J2K) == (tc.NOT_SUPPORTED, tc.ALWAYS)
    assert tc.classify(tc.EXPLICIT_LE, JPEG_LOSSLESS) == (tc.NOT_SUPPORTED, tc.ALWAYS)
    assert tc.classify(MPEG2, tc.EXPLICIT_LE) == (tc.NOT_SUPPORTED, tc.ALWAYS)
    assert tc.verdict(BASELINE, tc.EXPLICIT_LE) == tc.NOT_SUPPORTED
    assert tc.verdict(BASELINE, tc.EXPLICIT_LE, tc.Policy(decompress_lossy=True)) == \
        tc.SUPPORTED
    assert tc.verdict(tc.EXPLICIT_LE, tc.J2K) == tc.NOT_SUPPORTED
    assert tc.verdict(tc.EXPLICIT_LE, tc.J2K, tc.Policy(lossy=True)) == tc.NEW_UID
    for ts in TRANSFER_SYNTAXES:
        assert tc.verdict(ts.uid, ts.uid) == tc.SUPPORTED, "as stored is always possible"
        for target in tc.PRODUCIBLE:
            value = tc.verdict(ts.uid, target, tc.Policy(lossy=True, decompress_lossy=True))
            if ts.kind == "lossy" and target in tc.LOSSY_ENCODABLE and target != ts.uid:
                assert value == tc.NOT_SUPPORTED, "never compound lossy compression"


def test_published_table_is_the_matrix():
    table = tc.conformance_tables()["transcoding"]()
    lines = table.splitlines()
    assert len(lines) == 2 + len(TRANSFER_SYNTAXES)
    row = next(line for line in lines if line.startswith("| JPEG Baseline (Process 1) |"))
    assert row.count("NOT_SUPPORTED") == len(tc.PRODUCIBLE)
    row = next(line for line in lines if line.startswith("| Explicit VR Little Endian |"))
    assert row.split(" | ")[1:3] == ["SUPPORTED", "SUPPORTED (as stored)"]
    assert row.rstrip(" |").endswith("NEW_UID (Note 2)")


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    require("dcmcjpeg", "dcmcjpls", "dcmcrle")
    d = tmp_path_factory.mktemp("tc")
    kinds = ("jpeg-lossless", "jpeg-ls", "rle", "j2k-lossless", "jpeg-baseline")
    sources = ct_series(d / "src", len(kinds), rows=100, cols=90)
    return {kind: (compress(src, d / f"{kind}.dcm", kind), src)
            for kind, src in zip(kinds, sources)}


@pytest.mark.parametrize("kind", ["jpeg-lossless", "jpeg-ls", "rle", "j2k-lossless"])
@pytest.mark.parametrize("target", [tc.EXPLICIT_LE, tc.IMPLICIT_LE, tc.RLE,
                                    tc.JPEG_LS_LOSSLESS, tc.J2K_LOSSLESS])
def test_lossless_conversions_keep_uid_and_pixels(compressed, tmp_path, kind, target):
    path, src = compressed[kind]
    out = tc.convert(path, target, tmp_path)
    ds, original = dcmread(out.path), dcmread(src)
    assert ds.file_meta.TransferSyntaxUID == target
    assert out.sop_instance_uid == ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert not out.new_uid and "LossyImageCompression" not in ds
    assert np.array_equal(ds.pixel_array, original.pixel_array)
    assert ds.PatientName == original.PatientName and ds.ImageType == original.ImageType


@pytest.mark.parametrize("target", [tc.J2K, tc.JPEG_LS_NEAR])
def test_lossy_conversion_is_a_new_derived_instance(compressed, tmp_path, target):
    path, src = compressed["rle"]
    policy = tc.Policy(lossy=True, lossy_ratio=6, lossy_near=3)
    with pytest.raises(tc.TranscodeError, match="not supported"):
        tc.convert(path, target, tmp_path)
    out = tc.convert(path, target, tmp_path, policy)
    ds, original = dcmread(out.path), dcmread(src)
    assert out.new_uid and out.sop_instance_uid == ds.SOPInstanceUID != original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPInstanceUID == tc.derived_uid(original.SOPInstanceUID, target, policy)
    again = tc.convert(path, target, tmp_path, policy)
    assert again.sop_instance_uid == out.sop_instance_uid, "a resend reuses the UID"
    assert ds.LossyImageCompression == "01"
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(out.ratio, rel=0.01)
    assert ds.LossyImageCompressionMethod == tc.LOSSY_METHOD[target]
    assert ds.ImageType[0] == "DERIVED"
    assert ds.DerivationCodeSequence[0].CodeValue == "113040"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    diff = np.abs(ds.pixel_array.astype(int) - original.pixel_array.astype(int))
    if target == tc.JPEG_LS_NEAR:
        assert diff.max() <= 3
    assert ds.StudyInstanceUID == original.StudyInstanceUID


def test_lossy_stored_is_not_decompressed_unless_configured(compressed, tmp_path):
    path, _src = compressed["jpeg-baseline"]
    with pytest.raises(tc.TranscodeError, match="JPEG Baseline.*Table N.5-9"):
        tc.convert(path, tc.EXPLICIT_LE, tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing half-written is left"
    out = tc.convert(path, tc.EXPLICIT_LE, tmp_path, tc.Policy(decompress_lossy=True))
    ds = dcmread(out.path)
    assert ds.SOPInstanceUID == dcmread(path).SOPInstanceUID
    assert ds.LossyImageCompression == "01"
    assert np.array_equal(ds.pixel_array, dcmread(path).pixel_array)


def test_implicit_to_explicit_copies_pixels_and_keeps_private_data(tmp_path):
    src = ct_series(tmp_path / "src", 1)[0]
    ds = dcmread(src)
    ds.private_block(0x0011, "DICOMBOX TEST", create=True).add_new(0x01, "LO", "kept")
    ds.DataSetTrailingPadding = b"\0\0"   # (FFFC,FFFC): an element after the pixel data
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", implicit_vr=True, little_endian=True)
    ds2 = dcmread(tmp_path / "implicit.dcm")
    assert ds2.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    out = tc.convert(tmp_path / "implicit.dcm", tc.EXPLICIT_LE, tmp_path)
    got = dcmread(out.path)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.PixelData == ds.PixelData
    assert got[0x00110010].value == "DICOMBOX TEST"
    assert got[0x00111001].value in (b"kept", "kept")
    assert 0xFFFCFFFC in got
    back = tc.convert(out.path, tc.IMPLICIT_LE, tmp_path)
    assert dcmread(back.path).PixelData == ds.PixelData


def test_objects_without_pixel_data_change_encoding_only(tmp_path):
    sr = sr_document(tmp_path)
    for target in (tc.IMPLICIT_LE, tc.DEFLATED_LE, tc.J2K_LOSSLESS):
        out = tc.convert(sr, target, tmp_path, tc.Policy(lossy=True))
        ds = dcmread(out.path)
        assert ds.SOPInstanceUID == dcmread(sr).SOPInstanceUID and not out.new_uid
        assert ds.ContentSequence[0].TextValue == "No abnormality detected."


def test_undecodable_pixel_data_is_a_transcode_error(tmp_path, compressed):
    path, _ = compressed["jpeg-lossless"]
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xd8")        # the JPEG stream inside the first fragment
    data[start:start + 40] = b"\x00" * 40
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    with pytest.raises(tc.TranscodeError, match="cannot decode"):
        tc.convert(broken, tc.EXPLICIT_LE, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.dcm"]


def test_large_multiframe_is_converted_frame_by_frame(tmp_path):
    """64 MB of pixel data go through RLE and back holding about one frame at a time."""
    frame = multiframe(tmp_path / "big.dcm", 128, 512, 512)
    tracemalloc.start()
    try:
        rle = tc.convert(tmp_path / "big.dcm", tc.RLE, tmp_path)
        back = tc.convert(rle.path, tc.EXPLICIT_LE, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"peak {peak // 1024} KB for 64 MB of pixel data"
    ds = dcmread(back.path, defer_size=1024)
    assert ds.NumberOfFrames == 128
    with open(back.path, "rb") as f:
        f.seek(-512 * 512 * 2, 2)
        last = np.frombuffer(f.read(), "<u2").reshape(512, 512)
    assert np.array_equal(last, frame + 127)
