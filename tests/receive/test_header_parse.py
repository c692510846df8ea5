"""The fast header parse gives exactly what pydicom's parse gives, or declines.

Every case is differential: the values (or the refusal) of
``read_header`` -- from the file, from a head kept in memory, from a whole
file in memory -- are compared with those of the pydicom path
(``_parse_header``), and where the fast parse answers itself its answer
must be pydicom's.  Cases the fast parse must cover itself (the data a
modality sends) also check that it did not decline them.
"""

from __future__ import annotations

import io
import logging
import random
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicombox.store import instances
from dicombox.store.header import Truncated, parse_header
from dicombox.store.instances import DatasetError, read_header

import datagen
from helpers import require

HEAD = 64 * 1024
SC = datagen.SC


@pytest.fixture(autouse=True)
def _quiet():
    """pydicom warns (and logs) about the malformed data some cases feed it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _old(source):
    """The pydicom path's answer: the values, or ``("refused", message)``."""
    try:
        return instances._parse_header(source)
    except DatasetError as exc:
        return ("refused", str(exc))


def _new(path, head=None, complete=False):
    try:
        return read_header(path, head, complete)
    except DatasetError as exc:
        return ("refused", str(exc))


def check(data: bytes, directory: Path, fast: bool | None = None):
    """Compare every way of reading ``data`` with pydicom's; return pydicom's.

    ``fast``: True when the fast parse must answer itself, False when it
    must decline (None: either).
    """
    expected = _old(io.BytesIO(data))
    answer = parse_header(data, complete=True)
    if answer is not None:
        assert answer == expected
    if fast is not None:
        assert (answer is not None) == fast, expected
    path = directory / f"case-{len(list(directory.iterdir()))}.dcm"
    path.write_bytes(data)
    from_file = _old(path)
    assert _new(path) == from_file
    assert _values_of(from_file) == _values_of(expected)
    head = data[:HEAD]
    complete = len(data) <= HEAD
    assert _new(path, head, complete) == (expected if complete else from_file)
    return expected


def _values_of(result):
    return "refused" if isinstance(result, tuple) else result


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part 10 file in ``syntax``, as pydicom writes it."""
    from pydicom.dataset import FileMetaDataset
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", SC)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)   # may change the endianness
    return buf.getvalue()


def undefined_lengths(ds: Dataset) -> Dataset:
    """Mark every sequence and item of ``ds`` to be written with undefined length."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)
    return ds


# -- hand-written encodings, for what pydicom would not write ------------------

LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def el(tag: int, vr: str, value: bytes = b"", implicit=False, little=True,
       undefined=False) -> bytes:
    e = "<" if little else ">"
    length = 0xFFFFFFFF if undefined else len(value)
    if implicit:
        return struct.pack(e + "HHL", tag >> 16, tag & 0xFFFF, length) + value
    if vr in LONG:
        return struct.pack(e + "HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), length) + value
    return struct.pack(e + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length) + value


def item(content: bytes, undefined=False, little=True) -> bytes:
    e = "<" if little else ">"
    if undefined:
        return (struct.pack(e + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content
                + struct.pack(e + "HHL", 0xFFFE, 0xE00D, 0))
    return struct.pack(e + "HHL", 0xFFFE, 0xE000, len(content)) + content


def seq_end(little=True) -> bytes:
    return struct.pack("<HHL" if little else ">HHL", 0xFFFE, 0xE0DD, 0)


def part10(dataset: bytes, syntax: str = ExplicitVRLittleEndian,
           meta_tail: bytes | None = None) -> bytes:
    """Preamble, File Meta Information (with its group length) and ``dataset``."""
    def ui(uid):
        raw = uid.encode()
        return raw + b"\0" * (len(raw) % 2)
    meta = (el(0x00020001, "OB", b"\0\1") + el(0x00020002, "UI", ui(SC))
            + el(0x00020003, "UI", ui("1.2.3.4")))
    if meta_tail is None:
        meta += el(0x00020010, "UI", ui(syntax))
    else:
        meta += meta_tail
    return (b"\0" * 128 + b"DICM" + el(0x00020000, "UL", struct.pack("<L", len(meta)))
            + meta + dataset)


def text(value: str) -> bytes:
    raw = value.encode("latin-1")
    return raw + b" " * (len(raw) % 2)


def uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" * (len(raw) % 2)


def index_elements() -> dict[int, tuple[str, bytes]]:
    """The indexed attributes of an instance, tag -> (VR, value)."""
    elements = {
        0x00080016: ("UI", uid(SC)), 0x00080018: ("UI", uid("1.2.3.4")),
        0x00080020: ("DA", b"20260101"), 0x00080030: ("TM", b"120000"),
        0x00080050: ("SH", text("ACC1")), 0x00080060: ("CS", text("OT")),
        0x00080080: ("LO", text("Hospital")), 0x00081030: ("LO", text("Study")),
        0x0008103E: ("LO", text("Series")), 0x00100010: ("PN", text("Doe^John")),
        0x00100020: ("LO", text("PID1")), 0x00100030: ("DA", b"19700101"),
        0x00100040: ("CS", text("O")), 0x00180015: ("CS", text("CHEST")),
        0x0020000D: ("UI", uid("1.2.3")), 0x0020000E: ("UI", uid("1.2.3.1")),
        0x00200010: ("SH", text("1")), 0x00200011: ("IS", text("1")),
        0x00200013: ("IS", text("7")),
    }
    return elements


def build(elements: dict, implicit=False, little=True, extra: dict | None = None,
          pixels=True) -> bytes:
    """A data set of ``elements`` (tag -> (VR, value)) plus ``extra`` (tag ->
    encoded bytes), in tag order, with a small Pixel Data at the end."""
    chunks = {tag: el(tag, vr, value, implicit, little)
              for tag, (vr, value) in elements.items() if value is not None}
    chunks.update(extra or {})
    if pixels:
        chunks[0x7FE00010] = el(0x7FE00010, "OW", b"\0" * 16, implicit, little)
    return b"".join(chunks[t] for t in sorted(chunks))


def hand(implicit=False, little=True, extra=None, pixels=True) -> bytes:
    syntax = (ImplicitVRLittleEndian if implicit else
              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return part10(build(index_elements(), implicit, little, extra, pixels), syntax)


# -- data sets of the test generators, in every transfer syntax read here ------

@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("generated")
    return {
        "sc": datagen.tiny_instances(d / "sc", 1)[0],
        "ct": datagen.ct_series(d / "ct", 1, rows=256, cols=256)[0],
        "cr": datagen.cr_image(d / "cr", 64, 64),
        "sr": datagen.sr_document(d / "sr"),
        "latin1": datagen.ct_series(d / "l1", 1, patient=("Müller^Jürgen", "PÏD"),
                                    charset="ISO_IR 100")[0],
        "utf8": datagen.ct_series(d / "u8", 1, patient=("山田^太郎", "PID9"),
                                  charset="ISO_IR 192")[0],
    }


def _rich(ds: Dataset) -> Dataset:
    """``ds`` with private elements and sequences before the indexed ones
    (and indexed keywords inside items, which are not the instance's)."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = SC
    ref.ReferencedSOPInstanceUID = "1.2.3.99"
    ref.SOPInstanceUID = "9.9.9"               # inside an item: not indexed
    ref.PatientName = "Item^Name"
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "DCM", "x"
    ref.ConceptNameCodeSequence = Sequence([inner, Dataset()])
    ds.ReferencedStudySequence = Sequence([ref])
    ds.ReferencedImageSequence = Sequence([])
    lang = Dataset()
    lang.CodeValue, lang.CodingSchemeDesignator = "en", "RFC5646"
    ds.LanguageCodeSequence = Sequence([lang])
    block = ds.private_block(0x0009, "DICOMBOX TEST", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", b"\x01\x02\x03\x04" * 50)
    priv = Dataset()
    priv.PatientID = "nested"
    block.add_new(0x03, "SQ", Sequence([priv]))
    return ds


SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian,
            "big-endian": ExplicitVRBigEndian}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("name", ["sc", "ct", "cr", "sr", "latin1", "utf8"])
@pytest.mark.parametrize("shape", ["as-generated", "sequences-defined", "sequences-undefined"])
def test_generated_data_sets_read_as_pydicom_does(generated, tmp_path, name, syntax, shape):
    ds = dcmread(generated[name])
    if syntax == "big-endian" and "PixelData" in ds:
        del ds.PixelData                       # pydicom does not swap pixel data
    if shape != "as-generated":
        _rich(ds)
    if shape == "sequences-undefined":
        undefined_lengths(ds)
    data = encode(ds, SYNTAXES[syntax])
    values = check(data, tmp_path, fast=True)
    assert values["sop_instance_uid"] == ds.SOPInstanceUID
    assert values["transfer_syntax_uid"] == SYNTAXES[syntax]
    assert values["patient_name"] == str(ds.PatientName)


@pytest.mark.parametrize("kind", ["jpeg-lossless", "jpeg-baseline", "jpeg-ls", "rle"])
def test_compressed_by_dcmtk(generated, tmp_path, kind):
    require("dcmcjpeg", "dcmcjpls", "dcmcrle")
    for name in ("ct", "sc"):
        src = generated[name]
        if kind == "jpeg-baseline" and name == "ct":
            src = datagen.tiny_instances(tmp_path / "8bit", 1)[0]
        dst = datagen.compress(src, tmp_path / f"{name}-{kind}.dcm", kind)
        values = check(dst.read_bytes(), tmp_path, fast=True)
        assert values["transfer_syntax_uid"] == datagen.COMPRESSORS[kind][1]
        assert values["sop_instance_uid"] == dcmread(dst).SOPInstanceUID


def _syntax(implicit: bool) -> str:
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


@pytest.mark.parametrize("implicit", [False, True])
def test_missing_attributes(tmp_path, implicit):
    elements = index_elements()
    for tag in (0x00100010, 0x00180015, 0x00200013, 0x00080080):
        del elements[tag]
    values = check(part10(build(elements, implicit), _syntax(implicit)), tmp_path, fast=True)
    assert values["patient_name"] == values["body_part_examined"] == ""
    only_uids = {t: v for t, v in elements.items() if t in (0x00080016, 0x00080018)}
    values = check(part10(build(only_uids, implicit), _syntax(implicit)), tmp_path, fast=True)
    assert values["study_instance_uid"] == "" and values["sop_instance_uid"] == "1.2.3.4"


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("tag,vr,value", [
    (0x00080018, "UI", b"1.2.3.4\0"),            # UID padded with NUL
    (0x00080018, "UI", b" 1.2.3.4 "),
    (0x00100010, "PN", b"Doe^John "),            # trailing space
    (0x00100010, "PN", b"  Doe^John"),           # leading spaces are kept
    (0x00100010, "PN", b"Doe^John\0"),
    (0x00100010, "PN", b"Doe^John=Dough^Jon"),
    (0x00100020, "LO", b" PID "),
    (0x00180015, "CS", b" CHEST "),              # CS: both ends stripped
    (0x00200013, "IS", b" 12 "),
    (0x00200013, "IS", b"12345"),                # odd length
    (0x00080020, "DA", b"20260101\0"),
    (0x00080080, "LO", b"    "),                 # only padding
    (0x00080080, "LO", b""),                     # empty
    (0x00200011, "IS", b""),
    (0x00100010, "PN", b""),
    (0x00080080, "LO", "Hôpital Zürich".encode("latin-1")),
    (0x00080080, "LO", b"\xff\xfe bytes"),
])
def test_padding_and_odd_values(tmp_path, implicit, tag, vr, value):
    check(part10(build(index_elements() | {tag: (vr, value)}, implicit), _syntax(implicit)),
          tmp_path, fast=True)


@pytest.mark.parametrize("tag,vr", [(0x00100010, "UN"), (0x00100020, "OB"),
                                    (0x00200013, "UT"), (0x00100010, "SQ")])
def test_unusual_explicit_vr_of_an_indexed_value(tmp_path, tag, vr):
    """pydicom keeps the raw bytes whatever the VR; so does the fast parse."""
    check(part10(build(index_elements() | {tag: (vr, b"ABC ")})), tmp_path, fast=True)
    check(part10(build(index_elements() | {tag: (vr, b"")})), tmp_path)


@pytest.mark.parametrize("charset,name,fast", [
    ("ISO_IR 100", "Müller^Jürgen", True),
    ("ISO_IR 192", "山田^太郎", True),
    ("ISO_IR 6", "Doe^John", True),
    ("", "Doe^John", True),
    ("ISO_IR 100 ", "Müller", True),                # padded
    ("ISO_IR 144", "Иванов", False),                # one codec, not a simple one
    ("GB18030", "王^小明", False),
    ("\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", False),
    ("ISO 2022 IR 6\\ISO 2022 IR 100", "Müller", False),
    ("ISO_IR 100\\ISO_IR 192", "x", False),
    (" ISO_IR 100", "Müller", False),               # oddly spelt: pydicom decides
    ("ISO_IR 100\0", "Müller", False),
    ("ISO-IR 100", "Müller", False),                # unknown name
])
@pytest.mark.parametrize("implicit", [False, True])
def test_character_sets(tmp_path, charset, name, fast, implicit):
    from pydicom.charset import convert_encodings, encode_string
    try:
        encoded = encode_string(name, convert_encodings(charset.strip(" \0") or "ISO_IR 6"))
    except (LookupError, ValueError):
        encoded = name.encode("latin-1", "replace")
    raw_charset = charset.encode("latin-1")
    if len(raw_charset) % 2:
        raw_charset += b" "
    elements = index_elements() | {0x00080005: ("CS", raw_charset),
                                   0x00100010: ("PN", encoded + b" " * (len(encoded) % 2)),
                                   0x00081030: ("LO", encoded + b" " * (len(encoded) % 2))}
    values = check(part10(build(elements, implicit), _syntax(implicit)), tmp_path, fast=fast)
    if "\\" in charset:       # each value of several, not their Python repr
        assert values["specific_character_set"] == charset


def test_charset_with_an_unexpected_vr_is_left_to_pydicom(tmp_path):
    elements = index_elements() | {0x00080005: ("LO", b"ISO_IR 100")}
    check(part10(build(elements)), tmp_path, fast=False)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("tag,vr,value", [
    (0x00100010, "PN", b"Doe^John\\Roe^Jane"),
    (0x00080018, "UI", b"1.2.3\\1.2.4"),
    (0x00200013, "IS", b"1\\2 "),
    (0x00180015, "CS", b"CHEST\\ABDOMEN "),
    (0x00080080, "LO", b"\\"),
])
def test_multiple_values_are_left_to_pydicom(tmp_path, implicit, tag, vr, value):
    check(part10(build(index_elements() | {tag: (vr, value)}, implicit), _syntax(implicit)),
          tmp_path, fast=False)


# -- sequences and their items --------------------------------------------------

def _nested(implicit: bool, undefined: bool) -> bytes:
    """A private sequence holding an item with a nested sequence and indexed
    keywords that belong to the item, not to the instance."""
    inner = item(el(0x00080100, "SH", b"CODE", implicit), undefined)
    inner_seq = el(0x0040A043, "SQ", inner + (seq_end() if undefined else b""),
                   implicit, undefined=undefined)
    content = (el(0x00080018, "UI", uid("9.9.9"), implicit)
               + el(0x00100010, "PN", text("Item^Name"), implicit) + inner_seq)
    body = item(content, undefined) + item(b"", undefined)
    return (el(0x00090010, "LO", text("DICOMBOX TEST"), implicit)
            + el(0x00091001, "SQ", body + (seq_end() if undefined else b""), implicit,
                 undefined=undefined))


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined", [False, True])
def test_private_sequences_before_the_indexed_attributes(tmp_path, implicit, undefined):
    data = hand(implicit, extra={0x00090010: _nested(implicit, undefined)})
    values = check(data, tmp_path, fast=True)
    assert values["sop_instance_uid"] == "1.2.3.4"
    assert values["patient_name"] == "Doe^John"


def test_undefined_length_un_is_read_as_a_sequence_of_implicit_items(tmp_path):
    items = item(el(0x00100020, "LO", text("ITEM"), implicit=True)
                 + el(0x00080018, "UI", uid("9.9"), implicit=True), undefined=True)
    items += item(el(0x00080100, "SH", b"CODE", implicit=True))
    un = el(0x00090010, "LO", text("X")) + el(0x00091010, "UN", items + seq_end(),
                                               undefined=True)
    values = check(hand(extra={0x00090010: un}), tmp_path, fast=True)
    assert values["patient_id"] == "PID1"


def test_explicit_items_inside_an_undefined_length_un(tmp_path):
    items = item(el(0x00100020, "LO", text("ITEM")), undefined=True)
    un = el(0x00091010, "UN", items + seq_end(), undefined=True)
    check(hand(extra={0x00091010: un}), tmp_path, fast=True)


def test_empty_sequences_and_items(tmp_path):
    for undefined in (False, True):
        empty = el(0x00081110, "SQ", seq_end() if undefined else b"", undefined=undefined)
        empty_item = el(0x00081140, "SQ", item(b"", undefined)
                        + (seq_end() if undefined else b""), undefined=undefined)
        check(hand(extra={0x00081110: empty, 0x00081140: empty_item}), tmp_path, fast=True)


def test_undefined_length_private_element_that_is_not_a_sequence(tmp_path):
    """pydicom reads it up to a delimiter: left to pydicom."""
    value = el(0x00091001, "OB", b"\x01\x02\x03\x04" + seq_end(), implicit=True,
               undefined=True)
    check(hand(True, extra={0x00091001: value}), tmp_path, fast=False)


def test_charset_inside_an_item_is_left_to_pydicom(tmp_path):
    content = el(0x00080005, "CS", text("ISO_IR 100")) + el(0x00100010, "PN", text("X"))
    seq = el(0x00081110, "SQ", item(content, True) + seq_end(), undefined=True)
    check(hand(extra={0x00081110: seq}), tmp_path, fast=False)


def test_deep_nesting(tmp_path):
    content = el(0x00080100, "SH", b"CODE")
    for _ in range(40):
        content = el(0x0040A730, "SQ", item(content, True) + seq_end(), undefined=True)
    check(hand(extra={0x0040A730: content}), tmp_path)


# -- order, repetition and structure ----------------------------------------------

def test_attributes_out_of_order_are_still_found(tmp_path):
    elements = index_elements()
    late = [0x00080018, 0x0020000D]
    head = b"".join(el(t, *elements[t]) for t in sorted(elements) if t not in late)
    tail = el(0x00280010, "US", b"\x10\x00") + b"".join(el(t, *elements[t]) for t in late)
    values = check(part10(head + tail + el(0x7FE00010, "OW", b"\0" * 8)), tmp_path,
                   fast=True)
    assert values["sop_instance_uid"] == "1.2.3.4"


def test_attributes_after_the_pixel_data_are_not_read(tmp_path):
    elements = index_elements()
    data = part10(build({t: v for t, v in elements.items() if t != 0x00200013})
                  + el(0x7FE10010, "OB", b"x" * 4))
    values = check(data, tmp_path, fast=True)
    assert values["instance_number"] == ""


def test_repeated_attribute_is_left_to_pydicom(tmp_path):
    elements = index_elements()
    body = build(elements, pixels=False) + el(0x00100010, "PN", text("Second^Name"))
    values = check(part10(body), tmp_path, fast=False)
    assert values["patient_name"] == "Second^Name"


@pytest.mark.parametrize("implicit", [False, True])
def test_no_pixel_data(tmp_path, implicit):
    check(hand(implicit, pixels=False), tmp_path, fast=True)


def test_trailing_bytes_shorter_than_an_element(tmp_path):
    check(hand(pixels=False) + b"\x08\x00\x10", tmp_path, fast=True)


def test_big_endian_by_hand(tmp_path):
    seq = el(0x00081110, "SQ", item(el(0x00080100, "SH", b"CODE", little=False), True,
                                     little=False) + seq_end(False),
             little=False, undefined=True)
    check(hand(little=False, extra={0x00081110: seq}), tmp_path, fast=True)


def test_encoding_other_than_the_transfer_syntax_says(tmp_path):
    """pydicom reads the data set the way its first element is encoded."""
    implicit_body = build(index_elements(), implicit=True)
    values = check(part10(implicit_body, ExplicitVRLittleEndian), tmp_path, fast=False)
    assert values["sop_instance_uid"] == "1.2.3.4"
    explicit_body = build(index_elements())
    check(part10(explicit_body, ImplicitVRLittleEndian), tmp_path, fast=False)


@pytest.mark.parametrize("meta_tail", [
    b"",                                                        # no transfer syntax
    el(0x00020010, "UI", b"1.2.840.10008.1.2.1\\1.2 "),         # two of them
    el(0x00020010, "UI", b""),
    el(0x00020010, "LO", uid(ExplicitVRLittleEndian)),
    el(0x00020010, "UI", uid(DeflatedExplicitVRLittleEndian)),
])
def test_unusual_file_meta_is_left_to_pydicom(tmp_path, meta_tail):
    check(part10(build(index_elements()), meta_tail=meta_tail), tmp_path, fast=False)


def test_unknown_transfer_syntax_is_read_as_explicit_little_endian(tmp_path):
    values = check(part10(build(index_elements()), "1.2.3.4.5.6"), tmp_path, fast=True)
    assert values["transfer_syntax_uid"] == "1.2.3.4.5.6"


def test_transfer_syntax_padded_with_a_space(tmp_path):
    tail = el(0x00020010, "UI", b"1.2.840.10008.1.2.1 ")
    check(part10(build(index_elements()), meta_tail=tail), tmp_path, fast=True)


# -- heads kept in memory and files larger than them --------------------------------

def _cuts(length: int):
    cuts = set(range(0, min(length, 600), 3)) | set(range(0, length, max(1, length // 300)))
    return sorted(cuts | {length - 1, length})


@pytest.mark.parametrize("implicit", [False, True])
def test_every_truncated_head(tmp_path, implicit):
    """A head too short gives Truncated or pydicom's values of the whole
    file, never other values; read_header then reads the file."""
    data = hand(implicit, extra={0x00090010: _nested(implicit, True)})
    path = tmp_path / "whole.dcm"
    path.write_bytes(data)
    whole = _old(path)
    for cut in _cuts(len(data)):
        head = data[:cut]
        try:
            answer = parse_header(head, complete=False)
        except Truncated:
            answer = "truncated"
        assert answer in ("truncated", whole), cut
        assert _new(path, head, cut == len(data)) == whole, cut


def test_every_truncated_file(tmp_path):
    """A file cut short: the fast parse declines or agrees with pydicom, who
    decides what a short file holds (values or a refusal)."""
    undefined = el(0x00081110, "SQ", item(el(0x00080100, "SH", b"CODE"), True) + seq_end(),
                   undefined=True)
    data = hand(extra={0x00081110: undefined, 0x00091001: el(0x00091001, "OB", b"x" * 40)})
    outcomes = set()
    for cut in _cuts(len(data)):
        head = data[:cut]
        answer = parse_header(head, complete=True)
        expected = _old(io.BytesIO(head))
        if answer is not None:
            assert answer == expected, cut
        assert _new(tmp_path / "absent.dcm", head, True) == expected, cut
        outcomes.add("refused" if isinstance(expected, tuple) else "values")
    assert outcomes == {"refused", "values"}


@pytest.mark.parametrize("kind", ["private-OB", "undefined-sequence", "defined-sequence"])
def test_indexed_attributes_after_a_large_element(tmp_path, kind):
    """The head kept in memory ends before the indexed attributes: the file is read."""
    big = b"\x5a" * (100 * 1024)
    if kind == "private-OB":
        extra = el(0x00070010, "LO", text("BIG")) + el(0x00071001, "OB", big)
    else:
        undefined = kind == "undefined-sequence"
        items = b"".join(item(el(0x00080100, "SH", b"CODE") + el(0x00091001, "OB", big[:8192]),
                              undefined) for _ in range(12))
        extra = el(0x00080006, "SQ", items + (seq_end() if undefined else b""),
                   undefined=undefined)
    data = hand(extra={0x00070010: extra})
    assert len(data) > 1.5 * HEAD
    with pytest.raises(Truncated):
        parse_header(data[:HEAD], complete=False)
    values = check(data, tmp_path, fast=True)
    assert values["sop_instance_uid"] == "1.2.3.4"


def test_large_generated_instance_is_read_from_its_head(generated, tmp_path):
    """The head of a CT slice holds everything up to the pixel data."""
    data = generated["ct"].read_bytes()
    assert len(data) > HEAD
    assert parse_header(data[:HEAD], complete=False) == _old(generated["ct"])


# -- refusals ---------------------------------------------------------------------------

def _bad_inputs() -> dict[str, tuple[bytes, bool | None]]:
    """Damaged files: name -> (bytes, whether pydicom refuses them).

    pydicom is lenient with some (garbage after the meta is read as
    whatever elements it looks like; a data set cut short ends where it
    ends): those must give pydicom's values, not a refusal of our own.
    """
    rng = random.Random(7)
    good = build(index_elements(), pixels=False)
    cut_sequence = el(0x00281110, "SQ", item(el(0x00080100, "SH", b"CODE"), True),
                      undefined=True)
    return {
        "empty": (b"", True),
        "random": (bytes(rng.randrange(256) for _ in range(2000)), True),
        "no DICM": (b"\0" * 128 + b"DIC" + good, True),
        "preamble only": (b"\0" * 132, True),
        "DICM then garbage": (b"\0" * 128 + b"DICM"
                              + bytes(rng.randrange(256) for _ in range(500)), None),
        "group length cut": (part10(good)[:141], True),
        "meta only": (part10(b""), False),
        "garbage data set": (part10(bytes(rng.randrange(256) for _ in range(500))), None),
        "deflated but not deflated": (
            part10(good, DeflatedExplicitVRLittleEndian), True),
        # The structure breaks after the indexed attributes: pydicom refuses it.
        "sequence cut after the indexed attributes": (part10(good + cut_sequence), True),
        "item without delimiter at the end": (
            part10(good + el(0x00281110, "SQ", item(b"", False), undefined=True)), True),
        "long header cut after the indexed attributes": (
            part10(good + el(0x00291010, "OB", b"12")[:10]), True),
        # ... while it takes these as the end of the data set.
        "element header cut after the indexed attributes": (
            part10(good + el(0x00280010, "US", b"\0\0")[:4]), False),
        "value cut after the indexed attributes": (
            part10(good + el(0x00280010, "LO", b"ABCD")[:10]), False),
        "item delimiter at top level": (part10(good + item(b"", True)[8:]), False),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_damaged_files_are_refused_where_pydicom_refuses_them(tmp_path, name):
    data, refused = _bad_inputs()[name]
    expected = check(data, tmp_path)
    if refused is not None:
        assert isinstance(expected, tuple) == refused, expected
    if refused:
        assert expected[1].startswith("cannot decode the dataset")


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(DatasetError):
        read_header(tmp_path / "absent.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(DatasetError, match="DICM"):
        read_header(tmp_path / "empty.dcm")
    with pytest.raises(DatasetError, match="DICM"):
        read_header(tmp_path / "empty.dcm", b"", True)


def test_mutated_files_never_read_otherwise_than_by_pydicom(generated):
    """Random damage to real instances: whenever the fast parse answers, its
    answer is pydicom's (values, or pydicom refuses and it declined)."""
    rng = random.Random(2026)
    sources = [generated["sc"].read_bytes(),
               encode(undefined_lengths(_rich(dcmread(generated["sr"]))),
                      ImplicitVRLittleEndian),
               encode(_rich(dcmread(generated["utf8"])))[:6000]]
    answered = 0
    for data in sources:
        for _ in range(700):
            damaged = bytearray(data)
            for _ in range(rng.choice((1, 1, 2, 5))):
                at = rng.randrange(128, len(damaged))
                damaged[at] = rng.choice((0, 0xFF, rng.randrange(256),
                                          damaged[at] ^ (1 << rng.randrange(8))))
            if rng.random() < 0.2:
                damaged = damaged[:rng.randrange(128, len(damaged))]
            damaged = bytes(damaged)
            answer = parse_header(damaged, complete=True)
            if answer is not None:
                answered += 1
                assert answer == _old(io.BytesIO(damaged))
    assert answered > 300


def test_pydicom_parses_only_what_the_fast_parse_declines(generated, tmp_path, monkeypatch):
    """read_header reads the head, then the file, itself; pydicom only
    for what it declines (here a character set of several codecs)."""
    big = hand(extra={0x00070010: el(0x00070010, "LO", text("BIG"))
                      + el(0x00071001, "OB", b"\0" * (2 * HEAD))})
    cases = {"ct": generated["ct"].read_bytes(), "sc": generated["sc"].read_bytes(),
             "big": big}
    expected = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        expected[name] = _old(tmp_path / name)
    calls = []
    real = instances._parse_header
    monkeypatch.setattr(instances, "_parse_header", lambda source: calls.append(source))
    for name, data in cases.items():
        path = tmp_path / name
        assert read_header(path) == expected[name]
        assert read_header(path, data[:HEAD], len(data) <= HEAD) == expected[name]
        assert read_header(path, data, True) == expected[name]
    assert calls == []
    monkeypatch.setattr(instances, "_parse_header",
                        lambda source: calls.append(source) or real(source))
    elements = index_elements() | {0x00080005: ("CS", text("\\ISO 2022 IR 87"))}
    data = part10(build(elements))
    (tmp_path / "jp").write_bytes(data)
    assert read_header(tmp_path / "jp", data, True)["specific_character_set"] == \
        "\\ISO 2022 IR 87"
    assert len(calls) == 1
