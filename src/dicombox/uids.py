"""The SOP classes and transfer syntaxes the box knows, in one place.

The conformance statement's tables are generated from these lists
(``dicombox.docs``), so what is published is what the code negotiates.
"""

from __future__ import annotations

from typing import NamedTuple


class Uid(NamedTuple):
    uid: str
    name: str


VERIFICATION = Uid("1.2.840.10008.1.1", "Verification")
STORAGE_COMMITMENT_PUSH = Uid("1.2.840.10008.1.20.1", "Storage Commitment Push Model")
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
MPPS = Uid("1.2.840.10008.3.1.2.3.3", "Modality Performed Procedure Step")
INSTANCE_AVAILABILITY = Uid("1.2.840.10008.5.1.4.33", "Instance Availability Notification")
BASIC_STUDY_CONTENT = Uid("1.2.840.10008.1.9", "Basic Study Content Notification (Retired)")

#: Storage SOP classes accepted by the Storage SCPs (router and media), in UID
#: order.  The reference product's list (its §3.1.1), the examples of PS3.2
#: Table N.1-1 and the classes current modalities send.
STORAGE_SOP_CLASSES: tuple[Uid, ...] = tuple(sorted((
    Uid("1.2.840.10008.5.1.1.27", "Stored Print Storage (Retired)"),
    Uid("1.2.840.10008.5.1.1.29", "Hardcopy Grayscale Image Storage (Retired)"),
    Uid("1.2.840.10008.5.1.1.30", "Hardcopy Color Image Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.1", "Computed Radiography Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image Storage - For Presentation"),
    Uid("1.2.840.10008.5.1.4.1.1.1.1.1", "Digital X-Ray Image Storage - For Processing"),
    Uid("1.2.840.10008.5.1.4.1.1.1.2",
        "Digital Mammography X-Ray Image Storage - For Presentation"),
    Uid("1.2.840.10008.5.1.4.1.1.1.2.1",
        "Digital Mammography X-Ray Image Storage - For Processing"),
    Uid("1.2.840.10008.5.1.4.1.1.1.3",
        "Digital Intra-Oral X-Ray Image Storage - For Presentation"),
    Uid("1.2.840.10008.5.1.4.1.1.1.3.1",
        "Digital Intra-Oral X-Ray Image Storage - For Processing"),
    Uid("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.2.1", "Enhanced CT Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.3", "Ultrasound Multi-frame Image Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.3.1", "Ultrasound Multi-frame Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.4.1", "Enhanced MR Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.4.2", "MR Spectroscopy Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.5", "Nuclear Medicine Image Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.6", "Ultrasound Image Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.7.1", "Multi-frame Single Bit Secondary Capture Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.7.3",
        "Multi-frame Grayscale Word Secondary Capture Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.7.4", "Multi-frame True Color Secondary Capture Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.8", "Standalone Overlay Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.9", "Standalone Curve Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.9.1.1", "12-lead ECG Waveform Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.9.1.2", "General ECG Waveform Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.9.1.3", "Ambulatory ECG Waveform Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.9.2.1", "Hemodynamic Waveform Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.9.3.1", "Cardiac Electrophysiology Waveform Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.9.4.1", "Basic Voice Audio Waveform Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.10", "Standalone Modality LUT Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.11", "Standalone VOI LUT Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.11.2", "Color Softcopy Presentation State Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.11.3", "Pseudo-Color Softcopy Presentation State Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.11.4", "Blending Softcopy Presentation State Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.12.1", "X-Ray Angiographic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.12.1.1", "Enhanced XA Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.12.2", "X-Ray Radiofluoroscopic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.12.2.1", "Enhanced XRF Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.12.3", "X-Ray Angiographic Bi-Plane Image Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.13.1.1", "X-Ray 3D Angiographic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.13.1.3", "Breast Tomosynthesis Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.20", "Nuclear Medicine Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.66", "Raw Data Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.66.1", "Spatial Registration Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1", "VL Image Storage - Trial (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.77.2", "VL Multi-frame Image Storage - Trial (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.1", "VL Endoscopic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.1.1", "Video Endoscopic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.2", "VL Microscopic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.2.1", "Video Microscopic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.3", "VL Slide-Coordinates Microscopic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.4", "VL Photographic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.4.1", "Video Photographic Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.5.1", "Ophthalmic Photography 8 Bit Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.77.1.5.2", "Ophthalmic Photography 16 Bit Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.50", "Mammography CAD SR Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection Document Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.65", "Chest CAD SR Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.88.67", "X-Ray Radiation Dose SR Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.104.2", "Encapsulated CDA Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.128", "Positron Emission Tomography Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.129", "Standalone PET Curve Storage (Retired)"),
    Uid("1.2.840.10008.5.1.4.1.1.130", "Enhanced PET Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.1", "RT Image Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.2", "RT Dose Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.3", "RT Structure Set Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.4", "RT Beams Treatment Record Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.5", "RT Plan Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.6", "RT Brachy Treatment Record Storage"),
    Uid("1.2.840.10008.5.1.4.1.1.481.7", "RT Treatment Summary Record Storage"),
), key=lambda u: tuple(int(p) for p in u.uid.split("."))))


class TransferSyntax(NamedTuple):
    uid: str
    name: str
    keyword: str
    kind: str  # "uncompressed", "lossless", "lossy", "video", "deflate"


# Transfer syntaxes the Storage SCPs can accept, in the default order of
# preference (the SCP picks the first of these that the requester proposed
# in a presentation context):
# 1. Lossless compressed syntaxes: every bit is preserved, and a modality that
#    proposes one alongside the uncompressed ones holds the image compressed
#    (accepting it spares the modality a decompression and the box's disk and
#    network half the bytes).  JPEG Lossless first: the compressed syntax
#    PACS most often accept, so it is forwarded without transcoding.
# 2. Explicit VR Little Endian, then Implicit VR Little Endian, Deflated and
#    Big Endian: uncompressed; explicit VR keeps the VRs of private elements.
# 3. Lossy and video syntaxes last: chosen only when the modality offered
#    nothing else in that context, i.e. when the image is lossy at source, so
#    the box never causes a lossy copy of an image that was offered lossless.
TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    TransferSyntax("1.2.840.10008.1.2.4.70",
                   "JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1)",
                   "JPEGLosslessSV1", "lossless"),
    TransferSyntax("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)",
                   "JPEGLossless", "lossless"),
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", "RLELossless", "lossless"),
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", "JPEGLSLossless", "lossless"),
    TransferSyntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Image Compression (Lossless Only)",
                   "JPEG2000Lossless", "lossless"),
    TransferSyntax("1.2.840.10008.1.2.1", "Explicit VR Little Endian",
                   "ExplicitVRLittleEndian", "uncompressed"),
    TransferSyntax("1.2.840.10008.1.2", "Implicit VR Little Endian",
                   "ImplicitVRLittleEndian", "uncompressed"),
    TransferSyntax("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian",
                   "DeflatedExplicitVRLittleEndian", "deflate"),
    TransferSyntax("1.2.840.10008.1.2.2", "Explicit VR Big Endian (Retired)",
                   "ExplicitVRBigEndian", "uncompressed"),
    TransferSyntax("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)",
                   "JPEGBaseline8Bit", "lossy"),
    TransferSyntax("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)",
                   "JPEGExtended12Bit", "lossy"),
    TransferSyntax("1.2.840.10008.1.2.4.81", "JPEG-LS Lossy (Near-Lossless)",
                   "JPEGLSNearLossless", "lossy"),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression",
                   "JPEG2000", "lossy"),
    TransferSyntax("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level",
                   "MPEG2MPML", "video"),
    TransferSyntax("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile / High Level",
                   "MPEG2MPHL", "video"),
    TransferSyntax("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1",
                   "MPEG4HP41", "video"),
    TransferSyntax("1.2.840.10008.1.2.4.103",
                   "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
                   "MPEG4HP41BD", "video"),
)

TS_BY_UID = {ts.uid: ts for ts in TRANSFER_SYNTAXES}
TS_BY_KEYWORD = {ts.keyword: ts for ts in TRANSFER_SYNTAXES}
STORAGE_BY_UID = {u.uid: u for u in STORAGE_SOP_CLASSES}

#: The syntaxes every DICOM implementation must accept (PS3.5 §10.1).
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def resolve_transfer_syntax(value: str) -> str | None:
    """A transfer syntax UID from a UID or keyword; ``None`` if unknown."""
    if value in TS_BY_UID:
        return value
    ts = TS_BY_KEYWORD.get(value)
    return ts.uid if ts else None


def is_uid(value: str) -> bool:
    """True if ``value`` is a syntactically valid UID (PS3.5 §9.1)."""
    if not value or len(value) > 64:
        return False
    parts = value.split(".")
    return all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)
