"""Media application profiles (DICOM PS3.11): what may be written on which medium.

A profile fixes the transfer syntaxes the files of a file-set may use.  The
General Purpose profiles all allow Explicit VR Little Endian; the DVD, BD and
USB profiles with JPEG (or JPEG 2000) additionally allow those compressed
syntaxes, so a study received JPEG Lossless is written as received on a DVD
or a stick but decompressed for a CD.  An instance whose syntax a profile
does not allow is written in Explicit VR Little Endian, which every profile
allows and every reader understands; the box never compresses for media
(recompressing lossy would degrade the image, and there is no JPEG encoder
that keeps lossless JPEG bit-exact to the source anyway).

The SOP classes: every General Purpose profile takes any composite storage
SOP class (PS3.11 Annex D/E/F/...), so the box writes every class it stores.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"

_JPEG = (EXPLICIT_LE, JPEG_LOSSLESS_SV1, JPEG_BASELINE, JPEG_EXTENDED)
_J2K = (EXPLICIT_LE, J2K_LOSSLESS, J2K)


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    media: str  # "cd", "dvd", "bd", "usb"
    transfer_syntaxes: tuple[str, ...]

    def allows(self, transfer_syntax_uid: str) -> bool:
        return transfer_syntax_uid in self.transfer_syntaxes

    def target_syntax(self, transfer_syntax_uid: str) -> str:
        """The syntax an instance stored in ``transfer_syntax_uid`` is written in."""
        return transfer_syntax_uid if self.allows(transfer_syntax_uid) else EXPLICIT_LE


#: The profiles the box writes, by PS3.11 name.
PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("STD-GEN-CD", "General Purpose CD-R Interchange", "cd", (EXPLICIT_LE,)),
    Profile("STD-GEN-DVD-JPEG", "General Purpose DVD Interchange with JPEG", "dvd", _JPEG),
    Profile("STD-GEN-DVD-J2K", "General Purpose DVD Interchange with JPEG 2000", "dvd", _J2K),
    Profile("STD-GEN-BD-JPEG", "General Purpose BD Interchange with JPEG", "bd", _JPEG),
    Profile("STD-GEN-USB-JPEG",
            "General Purpose USB and Flash Memory Interchange with JPEG", "usb", _JPEG),
    Profile("STD-GEN-USB-J2K",
            "General Purpose USB and Flash Memory Interchange with JPEG 2000", "usb", _J2K),
)}

#: Largest medium that is a CD (an 80-minute CD-R holds 737 MB; DVDs start at 4.7 GB).
CD_MAX_BYTES = 900 * 1024 * 1024


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown media application profile {name!r} (known: {known})") from None


def choose(writer_kind: str, media_type: str = "", capacity_bytes: int = 0,
           configured: str = "auto") -> Profile:
    """The profile for a medium: the configured one, or by what the medium is.

    ``auto`` picks General Purpose CD-R for a CD (recognised by the drive's
    media type, or by a capacity a DVD never has), the BD profile with JPEG
    for a Blu-ray disc, the DVD profile with JPEG for other discs and for ISO
    files in a folder (they are burned to DVD later, or opened directly), and
    the USB profile with JPEG for sticks.
    """
    if configured and configured != "auto":
        return get(configured)
    if writer_kind == "usb":
        return PROFILES["STD-GEN-USB-JPEG"]
    if writer_kind == "optical":
        kind = media_type.upper()
        if kind.startswith("CD") or (not kind.startswith(("DVD", "BD"))
                                      and 0 < capacity_bytes <= CD_MAX_BYTES):
            return PROFILES["STD-GEN-CD"]
        if kind.startswith("BD"):
            return PROFILES["STD-GEN-BD-JPEG"]
    return PROFILES["STD-GEN-DVD-JPEG"]
