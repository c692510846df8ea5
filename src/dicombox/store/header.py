"""The indexed attributes of a Part 10 file, read straight from its bytes.

Every received instance is indexed by the attributes of
:data:`INDEX_KEYWORDS`.  pydicom's ``dcmread(stop_before_pixels=True)``
builds a dataset object of every element up to the pixel data to give them;
for a small instance that cost more than anything else the receive path
does per instance.  :func:`parse_header` walks the same bytes with
:mod:`struct` alone: tag, VR and length of each element, values skipped by
their length, only the indexed ones decoded.

It is a shortcut, never a second opinion: it returns values only for data it
reads exactly the way ``dcmread`` does, and returns ``None`` for anything
else, so the caller parses with pydicom, which then decides (values,
warnings or refusal) as it always did.  What it reads itself:

- a preamble with ``DICM``, and a File Meta Information group that starts
  with its group length and holds a Transfer Syntax UID;
- Implicit VR Little Endian, Explicit VR Little Endian (the native and
  every encapsulated transfer syntax) and Explicit VR Big Endian; not
  Deflated (pydicom inflates the whole data set) nor an unknown layout;
- elements with a VR pydicom knows; sequences and items of defined length
  skipped by length (pydicom keeps them as raw bytes too), of undefined
  length walked item by item as pydicom's ``read_sequence`` does (including
  its guess of implicit VR in each item and its reading of an undefined
  length UN as a sequence);
- a Specific Character Set of :data:`SIMPLE_CODECS`, spelt plainly, and
  indexed values with a single value.

It walks every element up to the pixel data, not only to the last indexed
one: pydicom does too, so a data set whose structure breaks after the
indexed attributes (a sequence cut short, a truncated element header) is
refused the same way, and attributes out of order or repeated cannot give
other values than pydicom's.

Reading past the bytes it was given raises :class:`Truncated` when they are
only the head of the file (the caller then parses the file itself); when
they are the whole file, pydicom decides how to read a short file.
"""

from __future__ import annotations

import struct

from pydicom import config as pydicom_config
from pydicom.datadict import _dictionary_vr_fast, dictionary_VR, tag_for_keyword
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STR_VR, VR

#: Attributes indexed for every instance: index column -> DICOM keyword.
INDEX_KEYWORDS = {
    "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID",
    "study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID",
    "patient_id": "PatientID", "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate", "patient_sex": "PatientSex",
    "study_date": "StudyDate", "study_time": "StudyTime", "study_id": "StudyID",
    "study_description": "StudyDescription", "accession_number": "AccessionNumber",
    "modality": "Modality", "series_number": "SeriesNumber",
    "series_description": "SeriesDescription", "instance_number": "InstanceNumber",
    "institution_name": "InstitutionName", "body_part_examined": "BodyPartExamined",
}
#: Character sets whose text values decode with one Python codec, so the
#: indexed values can be taken from the raw bytes without pydicom's
#: conversion and validation of every value.
SIMPLE_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                 "ISO_IR 192": "utf-8"}
#: Value representations whose leading spaces are not significant either.
STRIP_BOTH = {"UI", "IS", "DS", "DA", "TM", "DT", "CS", "AS"}


class Truncated(Exception):
    """A header parse ran past the bytes kept in memory."""


class _Unsupported(Exception):
    """Data this parser does not read exactly as pydicom does."""


_INDEX = {tag_for_keyword(kw): (name, dictionary_VR(tag_for_keyword(kw)))
          for name, kw in INDEX_KEYWORDS.items()}
#: Indexed tag -> (column, whether its dictionary VR has both ends stripped).
_INDEX_STRIP = {tag: (name, vr in STRIP_BOTH) for tag, (name, vr) in _INDEX.items()}
_NO_VALUES = {name: "" for name, _ in _INDEX.values()}
_STRIP_BOTH_VRS = frozenset(vr.encode("ascii") for vr in STRIP_BOTH)
_CHARSET = 0x00080005
_WANTED = frozenset(_INDEX) | {_CHARSET}
_PIXEL_DATA = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
#: Nesting of undefined-length sequences read here (pydicom recurses further).
_MAX_DEPTH = 32

#: Explicit VRs as encoded -> their name (pydicom's ``ENCODED_VR``).
_VR_NAMES = {vr.value.encode("ascii"): vr.value for vr in VR if len(vr.value) == 2}
_LONG_VRS = frozenset(vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_VRS = frozenset(_VR_NAMES) - _LONG_VRS
#: Explicit VRs whose empty value pydicom keeps as ``b""`` (read as ``""``).
_EMPTY_AS_TEXT = frozenset(vr.encode("ascii") for vr in STR_VR) | {b"SQ"}
#: Specific Character Set values accepted as written (trailing spaces
#: removed) -> the name pydicom gives them.
_CHARSET_NAMES = {name.encode("ascii"): name for name in SIMPLE_CODECS}

_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"
_META = struct.Struct("<HH2sH")
_EXPLICIT = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
_IMPLICIT = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}
_U32 = {True: struct.Struct("<L"), False: struct.Struct(">L")}


def parse_header(data, complete: bool) -> dict | None:
    """The indexed attributes of the Part 10 file starting in ``data``.

    ``data`` (bytes or a memory map) holds the file's first bytes,
    ``complete`` when that is the whole file.  Returns the values
    ``read_header`` gives (the indexed attributes, the specific character
    set and the transfer syntax UID), or ``None`` when pydicom must parse
    the file.  Raises :class:`Truncated` when ``data`` is a head that ends
    before the pixel data.
    """
    try:
        return _parse(data, complete)
    except _Unsupported:
        return None


def _short(complete: bool):
    """The data end before a structure does."""
    if complete:
        raise _Unsupported
    raise Truncated


def _parse(data, complete: bool) -> dict:
    n = len(data)
    if n < 140:
        _short(complete)
    if data[128:132] != b"DICM" or data[132:140] != _GROUP_LENGTH:
        raise _Unsupported
    pos = 132
    syntax = None
    unpack_meta = _META.unpack_from
    u32 = _U32[True].unpack_from
    while True:
        if pos + 8 > n:
            _short(complete)
        group, elem, vr, length = unpack_meta(data, pos)
        if group != 2:
            break
        if vr in _LONG_VRS:
            if pos + 12 > n:
                _short(complete)
            length = u32(data, pos + 8)[0]
            if length == _UNDEFINED:
                raise _Unsupported
            start = pos + 12
        elif vr in _SHORT_VRS:
            start = pos + 8
        else:
            raise _Unsupported
        pos = start + length
        if pos > n:
            _short(complete)
        if elem == 0x0010:
            if vr != b"UI":
                raise _Unsupported
            syntax = bytes(data[start:pos])
    if group in (0x0000, 0xFFFE) or syntax is None or b"\\" in syntax:
        raise _Unsupported
    transfer_syntax = syntax.decode("latin-1").rstrip("\0 ")
    if (not transfer_syntax or transfer_syntax == DeflatedExplicitVRLittleEndian
            or transfer_syntax in PrivateTransferSyntaxes):
        raise _Unsupported
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian

    # pydicom checks the first element for the VR encoding the transfer
    # syntax promises, and reads the data set the other way when it differs.
    if pos + 6 > n:
        _short(complete)
    b4, b5 = data[pos + 4], data[pos + 5]
    if (not (0x40 < b4 < 0x5B and 0x40 < b5 < 0x5B)) != implicit:
        raise _Unsupported

    found: dict = {}
    _walk(data, n, complete, pos, -1, implicit, little, found, 0)
    return _values(found, transfer_syntax)


def _walk(data, n: int, complete: bool, pos: int, stop: int, implicit: bool,
          little: bool, found: dict | None, depth: int) -> int:
    """Walk one data set from ``pos``; return the position after it.

    ``stop`` is -1 for the top-level data set (up to the pixel data or the
    end of the data), -2 for an item of undefined length (up to its
    delimitation item), else the end of an item of defined length.  The
    indexed elements of the top-level data set are put into ``found``.
    """
    unpack = _IMPLICIT[little].unpack_from if implicit else _EXPLICIT[little].unpack_from
    u32 = _U32[little].unpack_from
    while True:
        if stop >= 0 and pos >= stop:
            if pos != stop:
                raise _Unsupported
            return pos
        if pos + 8 > n:
            if not complete:
                raise Truncated
            if stop == -1:
                return pos      # pydicom ends the data set at the end of the file
            raise _Unsupported
        if implicit:
            group, elem, length = unpack(data, pos)
            vr = None
            start = pos + 8
        else:
            group, elem, vr, length = unpack(data, pos)
            if group == 0xFFFE or vr in _SHORT_VRS:
                start = pos + 8
            elif vr in _LONG_VRS:
                if pos + 12 > n:
                    _short(complete)
                length = u32(data, pos + 8)[0]
                start = pos + 12
            else:
                raise _Unsupported
        if group == 0xFFFE:
            if stop == -2 and elem == _ITEM_END and length == 0 and vr in (None, b"\0\0"):
                return pos + 8
            raise _Unsupported
        tag = group << 16 | elem
        if stop == -1 and tag in _PIXEL_DATA:
            return pos
        if length == _UNDEFINED:
            if tag in _WANTED and (found is not None or tag == _CHARSET):
                raise _Unsupported
            pos = _sequence(data, n, complete, start, tag, vr, implicit, little, depth)
            continue
        pos = start + length
        if pos > n:
            _short(complete)
        if tag in _WANTED:
            if found is not None:
                if tag in found:
                    raise _Unsupported
                found[tag] = (vr, data[start:pos])
            elif tag == _CHARSET:
                raise _Unsupported      # pydicom decodes it to read the item


def _sequence(data, n: int, complete: bool, pos: int, tag: int, vr: bytes | None,
              implicit: bool, little: bool, depth: int) -> int:
    """Walk the items of an undefined-length element whose value starts at
    ``pos`` if pydicom reads it as a sequence; return the position after
    its delimitation item."""
    if depth >= _MAX_DEPTH:
        raise _Unsupported
    if vr == b"UN":
        if not pydicom_config.settings.infer_sq_for_un_vr:
            raise _Unsupported
    elif vr is None:
        try:
            is_sequence = _dictionary_vr_fast(tag) == "SQ"
        except KeyError:
            # pydicom looks for an item tag, as here.
            if pos + 8 > n:
                _short(complete)
            is_sequence = _IMPLICIT[little].unpack_from(data, pos)[:2] == (0xFFFE, _ITEM)
        if not is_sequence:
            raise _Unsupported
    elif vr != b"SQ":
        raise _Unsupported
    unpack_item = _IMPLICIT[little].unpack_from
    while True:
        if pos + 8 > n:
            _short(complete)
        group, elem, length = unpack_item(data, pos)
        pos += 8
        if group != 0xFFFE:
            raise _Unsupported
        if elem == _SEQUENCE_END:
            return pos
        if elem != _ITEM:
            raise _Unsupported
        item_implicit = implicit
        if not implicit:
            # pydicom reads an item as implicit VR when its first element
            # does not look explicit.
            if pos + 6 > n:
                _short(complete)
            b4, b5 = data[pos + 4], data[pos + 5]
            item_implicit = not (0x40 < b4 < 0x5B and 0x40 < b5 < 0x5B)
        stop = -2 if length == _UNDEFINED else pos + length
        pos = _walk(data, n, complete, pos, stop, item_implicit, little, None, depth + 1)


def _values(found: dict, transfer_syntax: str) -> dict:
    """The values ``read_header`` gives for the raw elements found."""
    charset = ""
    if _CHARSET in found:
        vr, raw = found.pop(_CHARSET)
        if vr not in (None, b"CS"):
            raise _Unsupported
        charset = _CHARSET_NAMES.get(bytes(raw).rstrip(b" "))
        if charset is None:
            raise _Unsupported
    codec = SIMPLE_CODECS[charset]
    values = dict(_NO_VALUES)
    for tag, (vr, raw) in found.items():
        name, strip_both = _INDEX_STRIP[tag]
        if not raw:
            if vr is not None and vr not in _EMPTY_AS_TEXT:
                raise _Unsupported
            continue
        if b"\\" in raw:
            raise _Unsupported
        text = raw.decode(codec, "replace")
        if strip_both if vr is None else vr in _STRIP_BOTH_VRS:
            values[name] = text.strip(" \0")
        else:
            values[name] = text.rstrip(" \0")
    values["specific_character_set"] = charset
    values["transfer_syntax_uid"] = transfer_syntax
    return values
