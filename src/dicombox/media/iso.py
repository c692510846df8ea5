"""The ISO 9660 image of a file-set (pycdlib), written straight to disk.

Names: the ISO 9660 tree uses interchange level 1 (8.3, uppercase, version
``;1``): a DICOM File ID component is already at most 8 characters from A-Z,
0-9 and _, and the PDI extras (README.TXT, INDEX.HTM, IHE_PDI/) are 8.3 by
design, so the names every reader sees are the File IDs of the DICOMDIR.
Rock Ridge and Joliet trees carry the same names (without the ``.;1``) so
Linux, macOS and Windows all list them as written.

Memory: pycdlib is given each file by name and opens it only while it copies
that file's extent into the image (``add_file``), so neither the job nor the
image is ever in memory and the number of open files stays at one whatever
the size of the job.  The image is written to ``<iso_path>.partial``,
fsync'd and renamed, so ``iso_path`` is either absent or complete.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from ..store.fsutil import fsync_dir
from .errors import MediaError
from .verify import check_cancel

_DIR_NAME = re.compile(r"^[A-Z0-9_]{1,8}$")
_FILE_NAME = re.compile(r"^[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?$")
_VOLID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
#: ISO 9660 level 1 allows 8 directory levels.
MAX_DEPTH = 8
APPLICATION = "DICOMBOX"


def volume_id_from(text: str) -> str:
    """A valid volume identifier: d-characters, at most 16 (Joliet's limit).

    A ``_1OF3``-style suffix survives the shortening: the job's part is cut.
    """
    out = "".join(c if c in _VOLID_CHARS else "_" for c in text.upper())
    m = re.fullmatch(r"(.*?)(_\d+OF\d+)?", out)
    head, tail = m.group(1), m.group(2) or ""
    out = (head[:max(16 - len(tail), 0)] + tail)[:16]
    return out or "DICOM"


def iso9660_name(name: str) -> str:
    """``IM000001`` -> ``IM000001.;1``, ``README.TXT`` -> ``README.TXT;1``."""
    return (name if "." in name else name + ".") + ";1"


def _collect(root: Path) -> tuple[list[str], list[tuple[str, Path, int]]]:
    """The directories and files under ``root`` (sorted), checked for level 1 names."""
    dirs: list[str] = []
    files: list[tuple[str, Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        depth = len(rel.parts)
        for d in dirnames:
            if not _DIR_NAME.match(d):
                raise MediaError("build-failed",
                                 f"{rel / d} is not an ISO 9660 level 1 directory name")
            if depth + 1 >= MAX_DEPTH:
                raise MediaError("build-failed", f"{rel / d} is nested too deeply for ISO 9660")
            dirs.append("/".join((*rel.parts, d)))
        for f in sorted(filenames):
            if not _FILE_NAME.match(f):
                raise MediaError("build-failed",
                                 f"{rel / f} is not an ISO 9660 level 1 (8.3) file name")
            path = Path(dirpath, f)
            files.append(("/".join((*rel.parts, f)), path, path.stat().st_size))
    return dirs, files


def build_iso(fileset_dir: Path, iso_path: Path, volume_id: str,
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None) -> int:
    """Write the ISO image of ``fileset_dir`` to ``iso_path``; return its size in bytes.

    ``progress`` receives (bytes written, image size).  Raises
    :class:`MediaError` (``build-failed``, ``cancelled``); nothing is left at
    ``iso_path`` when it does.
    """
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    fileset_dir, iso_path = Path(fileset_dir), Path(iso_path)
    volid = volume_id_from(volume_id)
    try:
        dirs, files = _collect(fileset_dir)
    except OSError as exc:
        raise MediaError("build-failed", f"cannot read the file-set: {exc}") from exc
    iso = pycdlib.PyCdlib()
    partial = iso_path.with_name(iso_path.name + ".partial")
    try:
        iso.new(interchange_level=1, vol_ident=volid, app_ident_str=APPLICATION,
                joliet=3, rock_ridge="1.09")
        for d in dirs:
            iso.add_directory(iso_path="/" + d, rr_name=d.rsplit("/", 1)[-1],
                              joliet_path="/" + d)
        for rel, path, _size in files:
            parent, _, name = rel.rpartition("/")
            prefix = "/" + parent + "/" if parent else "/"
            iso.add_file(str(path), iso_path=prefix + iso9660_name(name), rr_name=name,
                         joliet_path="/" + rel)

        def report(done: int, total: int) -> None:
            check_cancel(cancel)
            if progress is not None:
                progress(done, total)

        with open(partial, "wb") as out:
            iso.write_fp(out, progress_cb=report)
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        os.replace(partial, iso_path)
        fsync_dir(iso_path.parent)
        return size
    except PyCdlibException as exc:
        raise MediaError("build-failed", f"cannot build the ISO image: {exc}") from exc
    except OSError as exc:
        raise MediaError("build-failed",
                         f"cannot write the ISO image {iso_path.name}: {exc.strerror or exc}") \
            from exc
    finally:
        try:
            iso.close()
        except PyCdlibException:
            pass
        try:
            partial.unlink()
        except FileNotFoundError:
            pass
