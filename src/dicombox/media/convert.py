"""Rewrite an instance in the transfer syntax a media profile requires.

Only ever towards Explicit VR Little Endian (see :mod:`.profiles`): compressed
pixel data is decoded (pydicom with the pylibjpeg/openjpeg/RLE/JPEG-LS
plugins the box installs), Implicit VR, Big Endian and Deflated encodings are
re-encoded.  UIDs are kept: the file on the medium is the same instance.

Decoding needs the instance's pixel data in memory, so memory is bounded by
the largest single instance, never by the job: instances are converted one
at a time and written straight to their place in the file-set.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian

from .errors import MediaError


def convert_to_explicit_le(src: Path, dst: Path) -> None:
    """Write ``src`` as Explicit VR Little Endian to ``dst`` (and fsync it)."""
    try:
        ds = dcmread(src)
        ts = UID(ds.file_meta.TransferSyntaxUID)
        if ts.is_compressed:
            # Keeps the SOP Instance UID; converts YBR JPEG colour to RGB.
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        with open(dst, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
    except MediaError:
        raise
    except (OSError, ValueError, NotImplementedError, RuntimeError, AttributeError,
            KeyError, TypeError) as exc:
        # pydicom and its decoder plugins raise all of these for undecodable
        # pixel data; the job must name the instance, not crash.
        raise MediaError("build-failed",
                         f"cannot convert {src.name} to Explicit VR Little Endian: "
                         f"{exc.__class__.__name__}: {exc}") from exc
