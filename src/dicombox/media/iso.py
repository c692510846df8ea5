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
the size of the job.  It does keep its whole directory tree as objects,
though (both trees' records, the Rock Ridge entries, an inode: 3-4 kB a
file), so a file-set of more than :data:`INLINE_MAX_FILES` files is built by
``xorriso -as mkisofs`` in a child process instead, with the same options
(level 1, Joliet, Rock Ridge, volume and application identifiers), so the
names every reader sees do not depend on which one built the image.  The
service's memory then stays flat whatever the number of files (xorriso's own
is about 2 kB a file, in its process, and freed when it ends); small images
are still built in-process, without a program to start.  The image is
written to ``<iso_path>.partial``, fsync'd and renamed, so ``iso_path`` is
either absent or complete.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..store.fsutil import fsync_dir
from . import proc
from .errors import MediaError
from .verify import check_cancel, walk_tree

_DIR_NAME = re.compile(r"^[A-Z0-9_]{1,8}$")
_FILE_NAME = re.compile(r"^[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?$")
_VOLID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
#: ISO 9660 level 1 allows 8 directory levels.
MAX_DEPTH = 8
APPLICATION = "DICOMBOX"
#: Up to this many files and directories an image is built in-process (pycdlib,
#: a few kB each, under 10 MB); above it ``xorriso -as mkisofs`` builds it.
INLINE_MAX_FILES = 2000
SECTOR = 2048
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)% done")
_PROBLEM = re.compile(r"^(libisofs|libburn|xorriso)\s*:\s*(FAILURE|SORRY|FATAL|ABORT)\s*:\s*(.*)")


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


def _check_name(rel: str, is_dir: bool) -> None:
    """Refuse what ISO 9660 level 1 cannot name (``rel``: the path under the root)."""
    name = rel.rpartition("/")[2]
    if is_dir:
        if not _DIR_NAME.match(name):
            raise MediaError("build-failed", f"{rel} is not an ISO 9660 level 1 directory name")
        if rel.count("/") + 1 >= MAX_DEPTH:
            raise MediaError("build-failed", f"{rel} is nested too deeply for ISO 9660")
    elif not _FILE_NAME.match(name):
        raise MediaError("build-failed", f"{rel} is not an ISO 9660 level 1 (8.3) file name")


def _walk(root: Path) -> Iterator[tuple[str, Path | None, int]]:
    """The directories (path ``None``) and files under ``root``, sorted, checked for level 1.

    Each directory is listed whole to be sorted: for the in-process build
    only (at most :data:`INLINE_MAX_FILES` entries).
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        parts = Path(dirpath).relative_to(root).parts
        for d in dirnames:
            rel = "/".join((*parts, d))
            _check_name(rel, True)
            yield rel, None, 0
        for f in sorted(filenames):
            rel = "/".join((*parts, f))
            _check_name(rel, False)
            path = Path(dirpath, f)
            yield rel, path, path.stat().st_size


def _collect(root: Path) -> tuple[list[str], list[tuple[str, Path, int]]]:
    """The directories and files under ``root`` (sorted), checked for level 1 names."""
    dirs: list[str] = []
    files: list[tuple[str, Path, int]] = []
    for rel, path, size in _walk(root):
        if path is None:
            dirs.append(rel)
        else:
            files.append((rel, path, size))
    return dirs, files


def build_iso(fileset_dir: Path, iso_path: Path, volume_id: str,
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None, *,
              xorriso: str = "xorriso", inline_max_files: int = INLINE_MAX_FILES) -> int:
    """Write the ISO image of ``fileset_dir`` to ``iso_path``; return its size in bytes.

    ``progress`` receives (bytes written, image size).  Raises
    :class:`MediaError` (``build-failed``, ``cancelled``); nothing is left at
    ``iso_path`` when it does.
    """
    fileset_dir, iso_path = Path(fileset_dir), Path(iso_path)
    volid = volume_id_from(volume_id)
    entries, data_bytes = 0, 0
    try:
        # Checked and counted as the file system lists them (walk_tree holds
        # no directory's listing: a series folder may have thousands of files).
        for rel, _path, is_dir, size in walk_tree(fileset_dir):
            _check_name(rel, is_dir)
            entries += 1
            data_bytes += -(-size // SECTOR) * SECTOR
    except OSError as exc:
        raise MediaError("build-failed", f"cannot read the file-set: {exc}") from exc
    partial = iso_path.with_name(iso_path.name + ".partial")

    def report(done: int, total: int) -> None:
        check_cancel(cancel)
        if progress is not None:
            progress(done, total)

    try:
        if entries > inline_max_files:
            _write_xorriso(xorriso, fileset_dir, partial, volid,
                           data_bytes + SECTOR * (64 + 2 * entries), report, cancel)
        else:
            _write_pycdlib(fileset_dir, partial, volid, report)
        with open(partial, "rb+") as out:
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if progress is not None:
            progress(size, size)
        os.replace(partial, iso_path)
        fsync_dir(iso_path.parent)
        return size
    except OSError as exc:
        raise MediaError("build-failed",
                         f"cannot write the ISO image {iso_path.name}: {exc.strerror or exc}") \
            from exc
    finally:
        try:
            partial.unlink()
        except FileNotFoundError:
            pass


def _write_pycdlib(fileset_dir: Path, partial: Path, volid: str,
                   report: Callable[[int, int], None]) -> None:
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    try:
        dirs, files = _collect(fileset_dir)
    except OSError as exc:
        raise MediaError("build-failed", f"cannot read the file-set: {exc}") from exc
    iso = pycdlib.PyCdlib()
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
        with open(partial, "wb") as out:
            iso.write_fp(out, progress_cb=report)
    except PyCdlibException as exc:
        raise MediaError("build-failed", f"cannot build the ISO image: {exc}") from exc
    finally:
        try:
            iso.close()
        except PyCdlibException:
            pass


def _write_xorriso(xorriso: str, fileset_dir: Path, partial: Path, volid: str, estimate: int,
                   report: Callable[[int, int], None],
                   cancel: threading.Event | None) -> None:
    """``xorriso -as mkisofs``: its names are the same level 1 + Joliet + Rock Ridge ones.

    Its progress ("NN.NN% done") is scaled to an estimate of the image's
    size; the exact size is reported once the image is complete.  The
    pacifier is polled every 0.1 s rather than every second: xorriso notices
    that the image is complete only at its next pacifier poll, which otherwise
    adds up to a second to every build.
    """
    def on_line(line: str) -> None:
        m = _PERCENT.search(line)
        if m:
            report(min(int(float(m.group(1)) / 100 * estimate), estimate), estimate)

    argv = [xorriso, "-no_rc", "-pacifier", "interval=0.1",
            "-as", "mkisofs", "-iso-level", "1", "-J", "-r", "-V", volid,
            "-A", APPLICATION, "-o", str(partial.absolute()), str(fileset_dir.absolute())]
    done = proc.run(argv, on_line=on_line, cancel=cancel, missing_kind="build-failed")
    if done.returncode != 0:
        problems = [m.group(3) for m in map(_PROBLEM.match, done.lines) if m]
        reason = problems[-1] if problems else (done.lines[-1] if done.lines else "")
        raise MediaError("build-failed", f"xorriso cannot build the ISO image: {reason}"
                         f" (exit status {done.returncode})")
