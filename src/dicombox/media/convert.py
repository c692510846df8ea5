"""Rewrite an instance in the transfer syntax a media profile requires.

Only ever towards Explicit VR Little Endian (see :mod:`.profiles`), with the
box's own transcoder (:mod:`dicombox.transcode`, the router's, run by a
worker process: :mod:`dicombox.transcoder`): compressed pixel data is decoded
one frame at a time and Implicit VR or Deflated encodings are re-encoded, so
memory stays at one frame whatever the size of the instance.  UIDs are
kept: the file on the medium is the same instance.

An image the modality sent lossy (JPEG baseline, say) is decoded too when
the profile has no room for its syntax (a CD): its Lossy Image Compression
(0028,2110) stays "01", so every viewer still knows it was compressed lossy.
What the transcoder cannot decode (video, Explicit VR Big Endian) cannot be
written with that profile, and the build names the instance.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MediaError


def convert_to_explicit_le(src: Path, dst: Path) -> None:
    """Write ``src`` as Explicit VR Little Endian to ``dst`` (same directory for the temp)."""
    from .. import transcode, transcoder
    from ..dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    src, dst = Path(src), Path(dst)
    try:
        converted = transcoder.convert(
            src, transcode.EXPLICIT_LE, dst.parent, transcode.Policy(decompress_lossy=True),
            implementation=(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME))
    except transcode.TranscodeError as exc:
        raise MediaError("build-failed",
                         f"{src.name} cannot be written in Explicit VR Little Endian: {exc}") \
            from exc
    except OSError as exc:
        raise MediaError("build-failed",
                         f"cannot convert {src.name}: {exc.strerror or exc}") from exc
    try:
        if converted.new_uid:   # the policy above never asks for one; guard the promise
            raise MediaError("build-failed", f"converting {src.name} would change its UID")
        os.replace(converted.path, dst)
    finally:
        try:
            os.unlink(converted.path)
        except FileNotFoundError:
            pass
