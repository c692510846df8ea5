"""Tables of the conformance statement's Media Interchange section, from the pipeline's lists.

The profiles and the transfer syntax each one writes come from
:mod:`.profiles`, the directory record of each SOP class from the same
pydicom tables the file-set is built with, the error kinds from
:mod:`.errors`, so what the statement says is what the box writes.
"""

from __future__ import annotations

from ..uids import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, TS_BY_UID
from .errors import KINDS
from .profiles import PROFILES, choose


def _md(headers, rows) -> str:
    from ..conformance import md_table
    return md_table(headers, rows)


def _ts_name(uid: str) -> str:
    ts = TS_BY_UID.get(uid)
    return ts.name if ts else uid


def record_type(sop_class_uid: str) -> str:
    """The DICOMDIR leaf record an instance of this SOP class gets."""
    from pydicom.dataset import Dataset
    from pydicom.fileset import _four_level_record_type, _single_level_record_type

    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.104."):
        ds.EncapsulatedDocument = b""
    if sop_class_uid == "1.2.840.10008.5.1.4.1.1.481.5":
        ds.RTPlanLabel = "plan"
    single = _single_level_record_type(ds)
    if single != "PATIENT":
        return single
    return _four_level_record_type(ds)


def _profiles() -> str:
    rows = []
    for p in PROFILES.values():
        rows.append([f"`{p.name}`", p.title, "FSC",
                     "; ".join(_ts_name(uid) for uid in p.transfer_syntaxes)])
    return _md(["Profile", "Title", "Role", "Transfer syntaxes of the files"], rows)


def _choice() -> str:
    cases = [
        ("optical", "CD-R / CD-RW (or a medium of at most 900 MB)", choose("optical", "CD-R")),
        ("optical", "DVD±R, DVD±RW, DVD-RAM", choose("optical", "DVD+R")),
        ("optical", "BD-R, BD-RE", choose("optical", "BD-R")),
        ("usb", "USB stick, memory card", choose("usb")),
        ("folder", "ISO image files in a folder", choose("folder")),
    ]
    rows = [[f"`{w}`", medium, f"`{p.name}`"] for w, medium, p in cases]
    return _md(["Writer", "Medium", "Profile (`media.profile = \"auto\"`)"], rows)


def _conversions() -> str:
    from ..transcode import EXPLICIT_LE, NOT_SUPPORTED, classify

    rows = []
    for ts in TRANSFER_SYNTAXES:
        cells = [ts.name]
        for p in PROFILES.values():
            if p.target_syntax(ts.uid) == ts.uid:
                cells.append("as received")
            elif classify(ts.uid, EXPLICIT_LE).value == NOT_SUPPORTED:
                cells.append("as received (outside the profile: cannot be decoded)")
            elif ts.kind == "lossy":
                cells.append("Explicit VR LE (decoded, still marked lossy)")
            else:
                cells.append("Explicit VR LE")
        rows.append(cells)
    return _md(["Stored transfer syntax", *[f"`{p.name}`" for p in PROFILES.values()]], rows)


def _sop_classes() -> str:
    rows = [[u.name, u.uid, record_type(u.uid)] for u in STORAGE_SOP_CLASSES]
    return _md(["SOP Class", "SOP Class UID", "Directory record (below PATIENT/STUDY/SERIES)"],
               rows)


def _character_sets() -> str:
    from pydicom.charset import python_encoding

    single = sorted(t for t in python_encoding if t and not t.startswith("ISO 2022"))
    extended = sorted(t for t in python_encoding if t.startswith("ISO 2022"))
    return _md(["Kind", "Defined Terms of Specific Character Set (0008,0005)"], [
        ["Without code extensions", ", ".join(single)],
        ["With code extensions (ISO 2022)", ", ".join(extended)],
    ])


def _errors() -> str:
    return _md(["Error", "Meaning"], [[f"`{k}`", v] for k, v in KINDS.items()])


def conformance_tables() -> dict:
    return {
        "media-profiles": _profiles,
        "media-profile-choice": _choice,
        "media-conversions": _conversions,
        "media-sop-classes": _sop_classes,
        "media-errors": _errors,
        "media-character-sets": _character_sets,
    }
