"""Transfer-syntax conversion: which conversions the box performs, and doing them.

The matrix (:func:`classify`) is the single source of truth: forwarding asks it
which of a destination's accepted transfer syntaxes an instance may be sent
in, and the conformance statement's Table N.5-9 is generated from it
(:func:`conformance_tables`).  Its values are those of PS3.2 Table N.5-9:

* ``SUPPORTED``: converted, the SOP Instance UID is kept (every lossless
  conversion: uncompressed <-> lossless compressed, implicit <-> explicit VR);
* ``NEW_UID``: converted into a new SOP Instance (lossless -> lossy), only for
  destinations configured with ``lossy = true``;
* ``NOT_SUPPORTED``: never done (an image stored lossy is never decompressed
  and passed on as if it were an original, unless the destination is
  configured with ``decompress_lossy = true``; a lossy image is never
  re-compressed lossy; pydicom has no JPEG process 1/2/4/14 encoder).

:func:`convert` writes the converted instance to a file in the spool's
``tmp/`` directory, one frame at a time: the source frames are read from the
file and decoded one by one, and uncompressed pixel data of the same byte
order is copied in chunks, so a 1 GB multi-frame instance never sits in
memory.  The header (everything but the pixel data) is re-encoded by pydicom.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .uids import TRANSFER_SYNTAXES, TS_BY_UID

SUPPORTED = "SUPPORTED"
NEW_UID = "NEW_UID"
NOT_SUPPORTED = "NOT_SUPPORTED"

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"

#: Native (uncompressed, little endian) syntaxes the box reads and writes.
NATIVE = (EXPLICIT_LE, IMPLICIT_LE)
#: Compressed syntaxes pydicom can encode (RLE, pyjpegls, pylibjpeg-openjpeg).
LOSSLESS_ENCODABLE = (RLE, JPEG_LS_LOSSLESS, J2K_LOSSLESS)
LOSSY_ENCODABLE = (JPEG_LS_NEAR, J2K)
#: Lossy Image Compression Method (0028,2114) of each lossy syntax produced.
LOSSY_METHOD = {JPEG_LS_NEAR: "ISO_14495_1", J2K: "ISO_15444_1"}
#: Every transfer syntax the box can produce other than the stored one, in
#: the column order of Table N.5-9.
PRODUCIBLE = (IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, *LOSSLESS_ENCODABLE, *LOSSY_ENCODABLE)

#: Conditions under which a conversion is allowed (the destination setting).
ALWAYS = ""
IF_LOSSY = "lossy"
IF_DECOMPRESS_LOSSY = "decompress_lossy"


class Verdict(NamedTuple):
    value: str        # SUPPORTED, NEW_UID or NOT_SUPPORTED
    condition: str    # ALWAYS, IF_LOSSY or IF_DECOMPRESS_LOSSY


def _kind(uid: str) -> str:
    ts = TS_BY_UID.get(uid)
    return ts.kind if ts else "unknown"


def classify(stored: str, target: str) -> Verdict:
    """The conversion matrix: can an instance stored in ``stored`` be sent in ``target``?"""
    if stored == target:
        return Verdict(SUPPORTED, ALWAYS)            # no conversion at all
    skind, tkind = _kind(stored), _kind(target)
    if target not in PRODUCIBLE or skind in ("video", "unknown") or stored == EXPLICIT_BE:
        return Verdict(NOT_SUPPORTED, ALWAYS)
    if DEFLATED_LE in (stored, target):
        # Deflate is used for non-image objects: only to and from the native syntaxes.
        ok = (stored in NATIVE) or (target in NATIVE)
        return Verdict(SUPPORTED, ALWAYS) if ok else Verdict(NOT_SUPPORTED, ALWAYS)
    if skind == "lossy":
        if tkind == "lossy":
            return Verdict(NOT_SUPPORTED, ALWAYS)     # never compound a lossy compression
        return Verdict(SUPPORTED, IF_DECOMPRESS_LOSSY)
    if tkind == "lossy":
        return Verdict(NEW_UID, IF_LOSSY)
    return Verdict(SUPPORTED, ALWAYS)


@dataclass(frozen=True)
class Policy:
    """What a destination allows beyond the lossless conversions."""

    lossy: bool = False
    decompress_lossy: bool = False
    #: JPEG 2000 (lossy) target compression ratio.
    lossy_ratio: float = 10.0
    #: JPEG-LS near-lossless maximum absolute error (NEAR).
    lossy_near: int = 2


def verdict(stored: str, target: str, policy: Policy = Policy()) -> str:
    """The matrix value of a conversion for a destination with ``policy``."""
    value, condition = classify(stored, target)
    if condition == IF_LOSSY and not policy.lossy:
        return NOT_SUPPORTED
    if condition == IF_DECOMPRESS_LOSSY and not policy.decompress_lossy:
        return NOT_SUPPORTED
    return value


def possible(stored: str, target: str, policy: Policy = Policy()) -> bool:
    return verdict(stored, target, policy) != NOT_SUPPORTED


def derived_uid(sop_instance_uid: str, target: str, policy: Policy) -> str:
    """The SOP Instance UID of a lossy copy: derived, so a resend reuses it.

    Delivery is at-least-once; a random UID would leave a destination with
    two lossy copies after a resend, a derived one replaces the first.
    """
    key = f"{sop_instance_uid}|{target}|{policy.lossy_ratio}|{policy.lossy_near}"
    digest = hashlib.sha256(key.encode("ascii", "replace")).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


class TranscodeError(ValueError):
    """The instance cannot be converted; retrying will not help."""


@dataclass(frozen=True)
class Converted:
    """A converted copy of an instance, in a temporary file the caller removes."""

    path: Path
    transfer_syntax_uid: str
    sop_instance_uid: str
    new_uid: bool
    ratio: float | None = None


PIXEL_DATA = 0x7FE00010
_ITEM = 0xE000FFFE.to_bytes(4, "little")  # (FFFE,E000) as written in little endian
_COPY_CHUNK = 1 << 20


def _tag_bytes(group: int, element: int) -> bytes:
    return struct.pack("<HH", group, element)


def convert(src: Path, target: str, tmp_dir: Path, policy: Policy = Policy(),
            implementation: tuple[str, str] | None = None, out: Path | None = None
            ) -> Converted:
    """Write ``src`` converted to ``target`` into a new file in ``tmp_dir``.

    Raises :class:`TranscodeError` when the matrix forbids the conversion or
    the data cannot be decoded or encoded, ``OSError`` on I/O problems (which
    a retry may cure).  ``implementation`` is (class UID, version name) for
    the file meta information.  ``out``: an existing file in ``tmp_dir`` to
    write instead of a new one (removed too when the conversion fails).
    The services call this through :mod:`dicombox.transcoder` (a worker
    process), never in their own process.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    src = Path(src)
    if out is None:
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="convert-", suffix=".dcm")
        out = Path(name)
    else:
        fd = os.open(out, os.O_WRONLY | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb") as fp, open(src, "rb") as f:
            try:
                ds = dcmread(f, stop_before_pixels=True)
            except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError,
                    AttributeError, struct.error) as exc:
                raise TranscodeError(f"cannot decode the stored file: {exc}") from None
            stored = str(ds.file_meta.get("TransferSyntaxUID", ""))
            value = verdict(stored, target, policy)
            if value == NOT_SUPPORTED:
                raise TranscodeError(
                    f"conversion from {_ts_name(stored)} to {_ts_name(target)} is not "
                    "supported (Table N.5-9)")
            result = _Conversion(ds, f, fp, src, stored, target, policy, implementation)
            converted = result.run(out, value)
        return converted
    except BaseException:
        try:
            os.unlink(out)
        except FileNotFoundError:
            pass
        raise


def _ts_name(uid: str) -> str:
    ts = TS_BY_UID.get(uid)
    return ts.name if ts else uid or "(no transfer syntax)"


class _Conversion:
    """One conversion: the header re-encoded, the pixel data streamed."""

    def __init__(self, ds, f, fp, src: Path, stored: str, target: str, policy: Policy,
                 implementation):
        self.ds, self.f, self.fp, self.src = ds, f, fp, src
        self.stored, self.target, self.policy = stored, target, policy
        self.implementation = implementation

    def run(self, out: Path, value: str) -> Converted:
        ds, f = self.ds, self.f
        if DEFLATED_LE in (self.stored, self.target):
            return self._whole_dataset(out)
        pixel_pos = f.tell()
        header = f.read(8)
        if len(header) < 8:
            # No pixel data: only the header's encoding changes, nothing is lossy.
            self._write_header(ds, self.ds.SOPInstanceUID)
            return Converted(out, self.target, str(ds.SOPInstanceUID), False)
        group, element = struct.unpack(f"{'<' if self._stored_le() else '>'}HH", header[:4])
        if (group, element) != (0x7FE0, 0x0010):
            # Float / Double Float Pixel Data: never compressed; native targets only.
            if self.target in NATIVE:
                return self._whole_dataset(out)
            raise TranscodeError("float pixel data cannot be compressed")
        if self._stored_implicit():
            length = struct.unpack("<I", header[4:8])[0]
            src_vr = None
        else:
            src_vr = header[4:6].decode("ascii", "replace")
            length = struct.unpack("<I", f.read(4))[0]
        value_pos = f.tell()
        if self.stored in NATIVE and self.target in NATIVE:
            return self._native_copy(out, src_vr, length, value_pos)
        return self._through_frames(out, value, pixel_pos, value_pos, length)

    # -- encodings -------------------------------------------------------------

    def _stored_le(self) -> bool:
        return self.stored != EXPLICIT_BE

    def _stored_implicit(self) -> bool:
        return self.stored == IMPLICIT_LE

    def _target_implicit(self) -> bool:
        return self.target == IMPLICIT_LE

    def _file_meta(self, sop_instance_uid: str):
        from pydicom.dataset import FileMetaDataset

        old = self.ds.file_meta
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = old.get("MediaStorageSOPClassUID",
                                               self.ds.get("SOPClassUID", ""))
        meta.MediaStorageSOPInstanceUID = sop_instance_uid
        meta.TransferSyntaxUID = self.target
        if self.implementation:
            meta.ImplementationClassUID, meta.ImplementationVersionName = self.implementation
        else:
            meta.ImplementationClassUID = old.ImplementationClassUID
        if "SourceApplicationEntityTitle" in old:
            meta.SourceApplicationEntityTitle = old.SourceApplicationEntityTitle
        return meta

    def _write_header(self, ds, sop_instance_uid: str) -> None:
        """Preamble, file meta and the dataset elements before the pixel data."""
        from pydicom.filebase import DicomFileLike
        from pydicom.filewriter import write_dataset, write_file_meta_info

        fp = DicomFileLike(self.fp)
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, self._file_meta(sop_instance_uid), enforce_standard=True)
        fp.is_little_endian = True
        fp.is_implicit_VR = self._target_implicit()
        try:
            write_dataset(fp, ds)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error,
                OverflowError) as exc:
            raise TranscodeError(f"cannot re-encode the dataset: {exc}") from None

    def _write_pixel_header(self, vr: str, length: int) -> None:
        if self._target_implicit():
            self.fp.write(_tag_bytes(0x7FE0, 0x0010) + struct.pack("<I", length))
        else:
            self.fp.write(_tag_bytes(0x7FE0, 0x0010) + vr.encode("ascii") + b"\0\0"
                          + struct.pack("<I", length))

    def _trailing(self, position: int) -> None:
        """Copy the (rare) elements after the pixel data, re-encoded."""
        from pydicom.filebase import DicomFileLike
        from pydicom.filereader import read_dataset
        from pydicom.filewriter import write_dataset

        self.f.seek(position)
        rest = self.f.read()
        if not rest.strip(b"\0"):
            return
        try:
            from io import BytesIO
            trailing = read_dataset(BytesIO(rest), self._stored_implicit(), self._stored_le())
            fp = DicomFileLike(self.fp)
            fp.is_little_endian = True
            fp.is_implicit_VR = self._target_implicit()
            write_dataset(fp, trailing, self.ds.get("SpecificCharacterSet", "iso8859"))
        except (ValueError, TypeError, KeyError, AttributeError, struct.error,
                EOFError, NotImplementedError) as exc:
            raise TranscodeError(f"cannot re-encode the elements after the pixel data: "
                                 f"{exc}") from None

    # -- the conversions ---------------------------------------------------------

    def _whole_dataset(self, out: Path) -> Converted:
        """Deflate and float pixel data: small non-image objects, converted in memory."""
        from pydicom import dcmread

        self.fp.close()
        ds = dcmread(self.src)
        ds.file_meta = self._file_meta(str(ds.SOPInstanceUID))
        try:
            ds.save_as(out, enforce_file_format=True)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise TranscodeError(f"cannot re-encode the dataset: {exc}") from None
        return Converted(out, self.target, str(ds.SOPInstanceUID), False)

    def _native_copy(self, out: Path, src_vr: str | None, length: int,
                     value_pos: int) -> Converted:
        """Implicit <-> explicit VR little endian: the pixel bytes are copied as they are."""
        ds = self.ds
        if length == 0xFFFFFFFF:
            raise TranscodeError("native pixel data with undefined length")
        vr = src_vr if src_vr in ("OB", "OW") else (
            "OB" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW")
        self._write_header(ds, ds.SOPInstanceUID)
        self._write_pixel_header(vr, length)
        self.f.seek(value_pos)
        left = length
        while left:
            block = self.f.read(min(_COPY_CHUNK, left))
            if not block:
                raise TranscodeError("the stored pixel data is truncated")
            self.fp.write(block)
            left -= len(block)
        self._trailing(value_pos + length)
        return Converted(out, self.target, str(ds.SOPInstanceUID), False)

    def _frames(self, value_pos: int):
        """Decoded frames, read one at a time from the stored file."""
        from pydicom.pixels import as_pixel_options, get_decoder
        from pydicom.uid import UID

        try:
            decoder = get_decoder(self.stored)
        except NotImplementedError:
            raise TranscodeError(f"no decoder for {_ts_name(self.stored)}") from None
        opts = as_pixel_options(self.ds)
        opts["transfer_syntax_uid"] = UID(self.stored)
        opts["pixel_keyword"] = "PixelData"
        self.f.seek(value_pos)
        return decoder.iter_array(self.f, raw=True, as_rgb=False, **opts)

    def _through_frames(self, out: Path, value: str, pixel_pos: int, value_pos: int,
                        length: int) -> Converted:
        import numpy as np

        ds = self.ds
        bits = int(ds.get("BitsAllocated", 0) or 0)
        if bits not in (8, 16, 32):
            raise TranscodeError(f"Bits Allocated {bits} pixel data cannot be transcoded")
        frames = self._frames(value_pos)
        try:
            first, image_pixel = next(frames)
        except StopIteration:
            raise TranscodeError("the stored pixel data has no frames") from None
        except Exception as exc:  # noqa: BLE001 - decoder plugins raise anything
            raise TranscodeError(f"cannot decode the stored pixel data: {exc}") from None

        def all_frames():
            yield first
            try:
                for arr, _ in frames:
                    yield arr
            except Exception as exc:  # noqa: BLE001 - decoder plugins raise anything
                raise TranscodeError(f"cannot decode the stored pixel data: {exc}") from None

        photometric = str(image_pixel.get("photometric_interpretation",
                                          ds.get("PhotometricInterpretation", "")))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        frame_bytes = int(ds.Rows) * int(ds.Columns) * samples * bits // 8
        dtype = first.dtype.newbyteorder("<")
        if first.dtype.itemsize * 8 != bits:
            raise TranscodeError(f"decoded samples have {first.dtype.itemsize * 8} bits, "
                                 f"Bits Allocated is {bits}")
        ds.PhotometricInterpretation = photometric
        if samples > 1:
            ds.PlanarConfiguration = int(image_pixel.get("planar_configuration", 0) or 0)
        trailing_pos = self._skip_pixel_value(value_pos, length)

        if self.target in NATIVE:
            if _kind(self.stored) == "lossy":
                ds.LossyImageCompression = "01"
            total = frame_bytes * nframes
            self._write_header(ds, ds.SOPInstanceUID)
            self._write_pixel_header("OB" if bits <= 8 else "OW", total + total % 2)
            written = 0
            for arr in all_frames():
                data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
                written += len(data)
                self.fp.write(data)
            if written != total:
                raise TranscodeError(f"decoded {written} bytes of pixel data, expected {total}")
            if total % 2:
                self.fp.write(b"\0")
            self._trailing(trailing_pos)
            return Converted(out, self.target, str(ds.SOPInstanceUID), False)

        return self._encode(out, value, all_frames(), photometric, frame_bytes * nframes,
                            trailing_pos, dtype)

    def _skip_pixel_value(self, value_pos: int, length: int) -> int:
        """The file position after the stored pixel data value (items skipped)."""
        f = self.f
        saved = f.tell()
        try:
            if length != 0xFFFFFFFF:
                return value_pos + length
            pos = value_pos
            while True:
                f.seek(pos)
                head = f.read(8)
                if len(head) < 8:
                    return pos
                tag, item_len = struct.unpack("<II", head)
                pos += 8
                if tag == 0xE0DDFFFE:   # Sequence Delimitation Item
                    return pos
                pos += item_len
        finally:
            f.seek(saved)

    def _encode(self, out: Path, value: str, frames, photometric: str, native_total: int,
                trailing_pos: int, dtype) -> Converted:
        """Encode every frame into encapsulated fragments, then assemble the file."""
        import numpy as np
        from pydicom.pixels import get_encoder

        ds = self.ds
        encoder = get_encoder(self.target)
        opts = {
            "rows": int(ds.Rows), "columns": int(ds.Columns), "number_of_frames": 1,
            "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
            "bits_allocated": int(ds.BitsAllocated), "bits_stored": int(ds.BitsStored),
            "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
            "photometric_interpretation": photometric,
            "planar_configuration": 0,
        }
        if self.target == J2K:
            opts["j2k_cr"] = [float(self.policy.lossy_ratio)]
        if self.target == JPEG_LS_NEAR:
            opts["jls_error"] = int(self.policy.lossy_near)
        fd, name = tempfile.mkstemp(dir=out.parent, prefix="fragments-", suffix=".tmp")
        fragments = Path(name)
        lengths: list[int] = []
        try:
            with os.fdopen(fd, "w+b") as frag:
                for arr in frames:
                    try:
                        data = encoder.encode(np.ascontiguousarray(arr, dtype=dtype), **opts)
                    except Exception as exc:  # noqa: BLE001 - encoder plugins raise anything
                        raise TranscodeError(
                            f"cannot encode in {_ts_name(self.target)}: {exc}") from None
                    if len(data) % 2:
                        data += b"\0"
                    frag.write(_ITEM + struct.pack("<I", len(data)))
                    frag.write(data)
                    lengths.append(len(data))
                compressed = sum(lengths)
                ratio = native_total / compressed if compressed else None
                uid = str(ds.SOPInstanceUID)
                new_uid = value == NEW_UID
                if new_uid:
                    uid = self._mark_lossy(ratio)
                offsets, position = [], 0
                for n in lengths:
                    offsets.append(position)
                    position += 8 + n
                bot = b"" if position > 0xFFFFFFFF else struct.pack(f"<{len(offsets)}I",
                                                                    *offsets)
                self._write_header(ds, uid)
                self.fp.write(_tag_bytes(0x7FE0, 0x0010) + b"OB\0\0" + b"\xff\xff\xff\xff")
                self.fp.write(_ITEM + struct.pack("<I", len(bot)) + bot)
                frag.seek(0)
                shutil.copyfileobj(frag, self.fp, _COPY_CHUNK)
                self.fp.write(struct.pack("<II", 0xE0DDFFFE, 0))
        finally:
            try:
                os.unlink(fragments)
            except FileNotFoundError:
                pass
        self._trailing(trailing_pos)
        return Converted(out, self.target, uid, new_uid, ratio)

    def _mark_lossy(self, ratio: float | None) -> str:
        """PS3.3 C.7.6.1.1.5: a lossy copy is a new, derived SOP Instance."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        ds = self.ds
        original = str(ds.SOPInstanceUID)
        uid = derived_uid(original, self.target, self.policy)
        ds.SOPInstanceUID = uid
        ds.LossyImageCompression = "01"
        ratios = _values(ds.get("LossyImageCompressionRatio"))
        ratios.append(f"{ratio:.2f}"[:16] if ratio else "1")
        ds.LossyImageCompressionRatio = ratios
        methods = _values(ds.get("LossyImageCompressionMethod"))
        methods.append(LOSSY_METHOD[self.target])
        ds.LossyImageCompressionMethod = methods
        if "ImageType" in ds:
            image_type = _values(ds.ImageType) or ["DERIVED"]
            image_type[0] = "DERIVED"
            ds.ImageType = image_type
        description = f"Lossy compression {_ts_name(self.target)} ratio {ratios[-1]}"
        old = str(ds.get("DerivationDescription", "") or "")
        ds.DerivationDescription = (f"{old}; {description}" if old else description)[:1024]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113040", "DCM"
        code.CodeMeaning = "Lossy Compression"
        ds.DerivationCodeSequence = Sequence([code])
        source = Dataset()
        source.ReferencedSOPClassUID = ds.SOPClassUID
        source.ReferencedSOPInstanceUID = original
        ds.SourceImageSequence = Sequence([*ds.get("SourceImageSequence", []), source])
        return uid


def _values(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


# -- the conformance statement ------------------------------------------------------

def _short(uid: str) -> str:
    return TS_BY_UID[uid].name


def _transcoding_table() -> str:
    from .conformance import md_table

    headers = ["Stored Transfer Syntax \\ Sent"] + [_short(u) for u in PRODUCIBLE]
    rows = []
    for ts in TRANSFER_SYNTAXES:
        row = [ts.name]
        for target in PRODUCIBLE:
            value, condition = classify(ts.uid, target)
            if target == ts.uid:
                cell = "SUPPORTED (as stored)"
            elif condition == IF_LOSSY:
                cell = f"{value} (Note 2)"
            elif condition == IF_DECOMPRESS_LOSSY:
                cell = "NOT_SUPPORTED (Note 3)"
            else:
                cell = value
            row.append(cell)
        rows.append(row)
    return md_table(headers, rows)


def conformance_tables() -> dict:
    return {"transcoding": _transcoding_table}
