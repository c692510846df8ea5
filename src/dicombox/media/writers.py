"""Writers: put a built file-set on a disc, a USB stick or into a folder, and read it back.

Every writer has the same shape, so the media service treats them alike:

- ``probe()`` -> :class:`MediumInfo`: is there a medium, is it blank, how
  much fits on it;
- ``write(source, progress=None, cancel=None)``: ``source`` is the ISO image
  for writers with ``needs_iso`` (optical, folder) and the file-set directory
  for the USB writer; it checks the medium first and refuses a missing,
  closed, non-blank or too small one with a :class:`MediaError` whose kind
  says which, before anything is written;
- ``verify(iso_path=None, files=None, progress=None, cancel=None)``: read
  what was written back from the medium and compare it (the image's SHA-256,
  or every file's SHA-256 from the file-set's manifest); ``verify-failed``
  names the first difference;
- ``eject()``: give the medium back (open the tray; unmount the stick);
- ``usable_bytes(info)`` and ``block_bytes``: the room and the allocation
  unit :func:`.span.plan_volumes` should plan a job with.

All calls block, start no thread, and take an optional
:class:`threading.Event` that cancels a long step (``MediaError("cancelled")``).
Progress callbacks receive (bytes done, bytes in total).

The hardware stays behind these classes: tests drive the same code with an
xorriso pseudo-drive (``stdio:PATH``: a file, a small loop device, or
``/dev/full``), a FAT image written with mtools, and a temporary folder.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import itertools
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..store.fsutil import fsync_dir
from . import proc
from .errors import MediaError
from .verify import Meter, copy_file, sha256_file, verify_iso, verify_tree, walk_tree

__all__ = ["MediaError", "MediumState", "MediumInfo", "OpticalWriter", "UsbWriter",
           "FolderWriter", "writer_for", "writer_from_config"]

Progress = Callable[[int, int], None]
BLOCK = 2048


class MediumState(enum.Enum):
    NO_MEDIUM = "no-medium"
    BLANK = "blank"
    APPENDABLE = "appendable"   # holds data, more can be added (or, if rewritable, overwritten)
    CLOSED = "closed"           # holds data, nothing can be added
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class MediumInfo:
    state: MediumState
    capacity_bytes: int
    free_bytes: int           # what a write can use (the whole medium when it is overwritten)
    description: str          # one line for people: "blank DVD+RW, 4.7 GB free"
    media_type: str = ""      # "CD-R", "DVD+RW", "stdio file", "FAT32", "folder"
    rewritable: bool = False


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def _needs(kind: str, size: int, info: MediumInfo) -> None:
    if size > info.free_bytes:
        raise MediaError("too-small",
                         f"the {kind} needs {_mb(size)} but the medium has only "
                         f"{_mb(info.free_bytes)} free")


def _image_meter(size: int, files, iso_sha256: str | None, progress, cancel) -> Meter:
    reads = 1 + (files is not None) + (iso_sha256 is None)
    return Meter(size * reads, progress, cancel)


def _check_image(iso_path: Path, files, iso_sha256: str | None, meter: Meter) -> str:
    """Compare the image's files with the manifest (when given); return the image's SHA-256.

    With this, a medium that equals the image holds exactly the file-set's files.
    """
    if files is not None:
        verify_iso(iso_path, files, cancel=meter.cancel)
        meter.add(iso_path.stat().st_size)
    return iso_sha256 or sha256_file(iso_path, meter)[0]


# -- optical ------------------------------------------------------------------------------

_MEDIA_CURRENT = re.compile(r"^Media current:\s*(.*)$")
_MEDIA_STATUS = re.compile(r"^Media status\s*:\s*(.*)$")
_MEDIA_BLOCKS = re.compile(r"^Media blocks\s*:\s*(\d+) readable\s*,\s*(\d+) writable\s*,"
                           r"\s*(\d+) overall")
_MEDIA_SPACE = re.compile(r"^Media space\s*:\s*(\d+)s")
_WRITTEN = re.compile(r"(\d+)\s+of\s+(\d+)\s+MB written")
_PROBLEM = re.compile(r"^(libburn|libisofs|xorriso)\s*:\s*(FAILURE|SORRY|FATAL|ABORT)\s*:\s*(.*)")
_NOT_PRESENT = re.compile(r"not present|no medi|medium not|no disc", re.I)


class OpticalWriter:
    """A CD/DVD/BD drive driven by libburn through ``xorriso``.

    ``device`` is a drive (``/dev/sr0``) or an xorriso pseudo-drive
    ``stdio:PATH``.  The ISO image is burnt as a single track, unchanged
    (``-as cdrecord``), so what is on the disc is byte for byte the image
    that was built and whose files were checked; the read-back compares the
    disc with that image.  ``overwrite`` lets a rewritable medium that holds
    data (DVD+RW, a pseudo-drive file) be written over; write-once media that
    are not blank are always refused.
    """

    kind = "optical"
    needs_iso = True
    #: The run-out padding libburn appends to a CD track (and some slack).
    PAD_BYTES = 320 * 1024

    def __init__(self, device: str, xorriso: str = "xorriso", eject: bool = True, *,
                 speed: str = "", overwrite: bool = False):
        self.device = device
        self.xorriso = xorriso
        self.eject_after = eject
        self.speed = speed
        self.overwrite = overwrite

    def __repr__(self) -> str:
        return f"OpticalWriter({self.device!r})"

    block_bytes = BLOCK

    def usable_bytes(self, info: MediumInfo) -> int:
        """What an image may take on this medium (for :func:`.span.plan_volumes`)."""
        return max(info.free_bytes - self.PAD_BYTES, 0)

    def _problems(self, lines: Sequence[str]) -> list[str]:
        return [m.group(3).strip() for line in lines if (m := _PROBLEM.match(line.strip()))]

    def probe(self, cancel: threading.Event | None = None) -> MediumInfo:
        """Ask the drive what is in it.  Raises ``no-drive`` if the drive cannot be used."""
        done = proc.run([self.xorriso, "-abort_on", "FAILURE", "-outdev", self.device,
                         "-toc", "-tell_media_space"], cancel=cancel)
        current = status = ""
        overall = writable = space = 0
        for line in done.lines:
            line = line.strip()
            if m := _MEDIA_CURRENT.match(line):
                current = m.group(1).strip()
            elif m := _MEDIA_STATUS.match(line):
                status = m.group(1).strip()
            elif m := _MEDIA_BLOCKS.match(line):
                writable, overall = int(m.group(2)), int(m.group(3))
            elif m := _MEDIA_SPACE.match(line):
                space = int(m.group(1))
        if not current and not status:
            problems = self._problems(done.lines) or [done.text()[-200:]]
            if any(_NOT_PRESENT.search(p) for p in problems):
                return MediumInfo(MediumState.NO_MEDIUM, 0, 0, "no disc in the drive")
            raise MediaError("no-drive", f"cannot use the drive {self.device}: {problems[-1]}")
        media_type = current.split(",")[0].strip()
        rewritable = ("overwriteable" in current or "RW" in media_type or "RE" in media_type
                      or "RAM" in media_type)
        if _NOT_PRESENT.search(current) or _NOT_PRESENT.search(status):
            return MediumInfo(MediumState.NO_MEDIUM, 0, 0, "no disc in the drive")
        if "blank" in status:
            state = MediumState.BLANK
        elif "appendable" in status:
            state = MediumState.APPENDABLE
        elif "closed" in status:
            state = MediumState.CLOSED
        else:
            state = MediumState.UNKNOWN
        capacity = overall * BLOCK
        free = (space or writable) * BLOCK
        if state is not MediumState.BLANK and rewritable and self.overwrite:
            free = capacity
        word = {MediumState.BLANK: "blank", MediumState.APPENDABLE: "written, appendable",
                MediumState.CLOSED: "written, closed"}.get(state, status or "unknown")
        return MediumInfo(state, capacity, free, f"{word} {media_type}, {_mb(free)} free",
                          media_type, rewritable)

    def check(self, info: MediumInfo, size: int) -> None:
        """Refuse a medium this image cannot be written to (before writing)."""
        if info.state is MediumState.NO_MEDIUM:
            raise MediaError("no-medium", "no disc in the drive: insert a blank disc")
        if info.state is MediumState.CLOSED and not (info.rewritable and self.overwrite):
            raise MediaError("not-blank",
                             f"the disc is closed ({info.description}): insert a blank disc")
        if info.state is MediumState.APPENDABLE and not (info.rewritable and self.overwrite):
            raise MediaError("not-blank",
                             f"the disc already holds data ({info.description}): "
                             "insert a blank disc")
        if info.state is MediumState.UNKNOWN:
            raise MediaError("not-blank", f"the disc cannot be written ({info.description})")
        _needs("image", size + self.PAD_BYTES, info)

    def write(self, iso_path: Path, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> None:
        """Burn ``iso_path``; the tray stays closed for :meth:`verify`."""
        iso_path = Path(iso_path)
        size = iso_path.stat().st_size
        self.check(self.probe(cancel), size)
        meter = Meter(size, progress, cancel)

        def on_line(line: str) -> None:
            if m := _WRITTEN.search(line):
                done_mb, total_mb = int(m.group(1)), max(int(m.group(2)), 1)
                step = min(size * done_mb // total_mb, size) - meter.done
                if step > 0:
                    meter.add(step)

        argv = [self.xorriso, "-abort_on", "FAILURE", "-as", "cdrecord", "-v",
                f"dev={self.device}", "blank=as_needed"]
        if self.speed:
            argv.append(f"speed={self.speed}")
        argv.append(str(iso_path))
        done = proc.run(argv, on_line=on_line, cancel=cancel)
        ok = any("completed successfully" in line for line in done.lines)
        if done.returncode != 0 or not ok:
            problems = self._problems(done.lines) or [done.text()[-200:]]
            text = "; ".join(dict.fromkeys(problems))
            if any("exceeds free space" in p for p in problems):
                raise MediaError("too-small", f"the image does not fit on the disc: {text}")
            if any(_NOT_PRESENT.search(p) for p in problems):
                raise MediaError("removed", f"the disc went away while it was written: {text}")
            raise MediaError("write-failed", f"writing to {self.device} failed: {text}")
        meter.finish()

    def verify(self, iso_path: Path | None = None, files=None, *, iso_sha256: str | None = None,
               progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
        """Read the image's blocks back from the disc and compare them with ``iso_path``.

        With ``files`` (the file-set's manifest) the image's own files are
        compared with it first.  The disc is read through libburn
        (``-check_media``), not the kernel's block device, so a freshly burnt
        disc is read as it is now.  Ejects
        afterwards (also after a failure) when the writer was made with
        ``eject=True``.
        """
        if iso_path is None:
            raise ValueError("OpticalWriter.verify needs the ISO image it wrote")
        iso_path = Path(iso_path)
        try:
            size = iso_path.stat().st_size
            meter = _image_meter(size, files, iso_sha256, progress, cancel)
            expected = _check_image(iso_path, files, iso_sha256, meter)
            blocks = -(-size // BLOCK)
            h = hashlib.sha256()
            got = 0

            def sink(data: bytes) -> None:
                nonlocal got
                take = data[:max(size - got, 0)]
                h.update(take)
                got += len(data)
                meter.add(len(take))

            done = proc.run([self.xorriso, "-abort_on", "FAILURE", "-indev", self.device,
                             "-check_media", "what=disc", "min_lba=0",
                             f"max_lba={blocks - 1}", "data_to=-", "--"],
                            stdout_sink=sink, cancel=cancel)
            bad = [line for line in done.lines
                   if line.startswith("Media region") and re.search(r",\s*-", line)]
            if done.returncode != 0 or bad:
                problems = self._problems(done.lines) or bad or [done.text()[-200:]]
                if any(_NOT_PRESENT.search(p) for p in problems):
                    raise MediaError("removed", "the disc went away while it was read back")
                raise MediaError("verify-failed",
                                 f"the disc cannot be read back: {'; '.join(problems[-3:])}")
            if got < size or h.hexdigest() != expected:
                raise MediaError("verify-failed",
                                 f"the disc differs from the image ({got} of {size} bytes read)")
            meter.finish()
        finally:
            if self.eject_after:
                try:
                    self.eject()
                except MediaError:
                    pass

    def eject(self, cancel: threading.Event | None = None) -> None:
        done = proc.run([self.xorriso, "-abort_on", "FAILURE", "-outdev", self.device,
                         "-eject", "all"], cancel=cancel)
        if done.returncode != 0:
            problems = self._problems(done.lines) or [done.text()[-200:]]
            raise MediaError("no-drive", f"cannot eject {self.device}: {problems[-1]}")


# -- USB --------------------------------------------------------------------------------

_BYTES_FREE = re.compile(r"([\d ]+) bytes free")


def _fileset_files(root: Path) -> Iterator[tuple[str, Path, int]]:
    """Files of a file-set (relative path, path, size), DICOMDIR last: a copy cut
    short never looks complete.

    Read from the file system as they are wanted (:func:`.verify.walk_tree`),
    nothing held per file: the files of a folder come one after the other,
    the root's last (a copy per folder takes one mtools run per batch).
    """
    for rel, path, is_dir, size in walk_tree(root):
        if not is_dir and "/" in rel:
            yield rel, path, size
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name != "DICOMDIR" and not entry.is_dir(follow_symlinks=False):
                yield entry.name, Path(root, entry.name), entry.stat().st_size
    dicomdir = Path(root, "DICOMDIR")
    if dicomdir.is_file():
        yield "DICOMDIR", dicomdir, dicomdir.stat().st_size


class UsbWriter:
    """A USB stick: its mounted file system, or (``image``) a FAT image written with mtools.

    Files are copied in chunks and each is fsync'd, DICOMDIR last, so a stick
    pulled out early never holds a DICOMDIR that references missing files.
    A stick that already holds a DICOMDIR is refused (``not-blank``): the
    box never mixes two file-sets or deletes what someone else put there.
    The read-back drops each file from the page cache first, so it reads the
    stick, not memory.  With ``require_mount`` false the target may be any
    directory (tests, and boxes that mount elsewhere).
    """

    kind = "usb"
    needs_iso = False
    #: Files per mcopy run (keeps the command line short whatever the series size).
    MCOPY_BATCH = 400

    def __init__(self, target: Path | None = None, image: Path | str | None = None, *,
                 require_mount: bool = True, mtools_prefix: str = ""):
        if (target is None) == (image is None):
            raise ValueError("UsbWriter needs either a mount point (target) or an image")
        self.target = Path(target) if target is not None else None
        self.image = str(image) if image is not None else None
        self.require_mount = require_mount
        self.mtools_prefix = mtools_prefix

    def __repr__(self) -> str:
        return f"UsbWriter({self.target or self.image!s})"

    @property
    def block_bytes(self) -> int:
        """The allocation unit files are rounded up to (for spanning)."""
        return self._cluster()

    def usable_bytes(self, info: MediumInfo) -> int:
        return info.free_bytes

    # The image form: mtools -------------------------------------------------------------
    def _image_file(self) -> Path:
        return Path(self.image.split("@@", 1)[0])

    def _mtools(self, tool: str, *args: str, cancel=None, stdout_sink=None) -> proc.Finished:
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
        return proc.run([self.mtools_prefix + tool, "-i", self.image, *args], env=env,
                        cancel=cancel, stdout_sink=stdout_sink, missing_kind="no-drive")

    def _gone(self) -> bool:
        if self.image is not None:
            return not self._image_file().exists()
        assert self.target is not None
        return not self.target.is_dir() or (self.require_mount and not os.path.ismount(self.target))

    def probe(self, cancel: threading.Event | None = None) -> MediumInfo:
        if self._gone():
            where = self.image or self.target
            return MediumInfo(MediumState.NO_MEDIUM, 0, 0, f"no USB stick at {where}")
        if self.image is not None:
            return self._probe_image(cancel)
        assert self.target is not None
        st = os.statvfs(self.target)
        capacity, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        names = {p.name.upper() for p in self.target.iterdir()}
        names -= {"SYSTEM VOLUME INFORMATION", ".TRASHES", ".FSEVENTSD", ".SPOTLIGHT-V100"}
        if not os.access(self.target, os.W_OK) or st.f_flag & os.ST_RDONLY:
            return MediumInfo(MediumState.CLOSED, capacity, 0, "the stick is read-only", "usb")
        return self._state(names, capacity, free, "usb")

    def _probe_image(self, cancel) -> MediumInfo:
        listing = self._mtools("mdir", "-a", "::/", cancel=cancel)
        if listing.returncode != 0:
            return MediumInfo(MediumState.UNKNOWN, 0, 0,
                              f"no FAT file system in {self.image}: {listing.text()[-120:]}",
                              "FAT")
        free = 0
        for line in listing.lines:
            if m := _BYTES_FREE.search(line):
                free = int(m.group(1).replace(" ", ""))
        bare = self._mtools("mdir", "-a", "-b", "::/", cancel=cancel)
        names = {line.strip().rstrip("/").rsplit("/", 1)[-1].upper()
                 for line in bare.lines if line.strip().startswith("::/")}
        capacity = self._image_file().stat().st_size
        return self._state(names - {""}, capacity, free, "FAT")

    @staticmethod
    def _state(names: set[str], capacity: int, free: int, kind: str) -> MediumInfo:
        if "DICOMDIR" in names:
            return MediumInfo(MediumState.CLOSED, capacity, free,
                              f"the stick already holds a DICOM file-set, {_mb(free)} free",
                              kind)
        if names:
            return MediumInfo(MediumState.APPENDABLE, capacity, free,
                              f"the stick holds other files, {_mb(free)} free", kind)
        return MediumInfo(MediumState.BLANK, capacity, free, f"empty stick, {_mb(free)} free",
                          kind)

    def _cluster(self) -> int:
        """The file system's allocation unit (32 KiB, the largest usual, if unknown)."""
        if self.target is not None:
            try:
                return max(os.statvfs(self.target).f_bsize, 512)
            except OSError:
                return 32 * 1024
        done = self._mtools("minfo", "::")
        sector = re.search(r"sector size:\s*(\d+) bytes", done.text())
        cluster = re.search(r"cluster size:\s*(\d+) sectors", done.text())
        if done.returncode == 0 and sector and cluster:
            return int(sector.group(1)) * int(cluster.group(1))
        return 32 * 1024

    def check(self, info: MediumInfo, files: Iterable[tuple[str, Path, int]]) -> int:
        """Refuse a medium the files cannot be written to; return their bytes."""
        if info.state is MediumState.NO_MEDIUM:
            raise MediaError("no-medium", "no USB stick: insert one")
        if info.state is MediumState.CLOSED:
            raise MediaError("not-blank", f"{info.description}: use an empty stick")
        if info.state is MediumState.UNKNOWN:
            raise MediaError("not-blank", info.description)
        cluster = self._cluster()
        need = total = 0
        folders: set[str] = set()
        for rel, _, size in files:
            need += -(-size // cluster) * cluster
            total += size
            if "/" in rel:
                folders.add(rel.rsplit("/", 1)[0])
        need += cluster * len(folders)
        _needs("file-set", need, info)
        return total

    def write(self, fileset_dir: Path, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> None:
        """Copy the file-set onto the stick (DICOMDIR last) and make it durable."""
        root = Path(fileset_dir)
        total = self.check(self.probe(cancel), _fileset_files(root))
        meter = Meter(total, progress, cancel)
        if self.image is not None:
            self._write_image(root, meter, cancel)
        else:
            self._write_mounted(_fileset_files(root), meter)
        meter.finish()

    def _write_mounted(self, files, meter: Meter) -> None:
        assert self.target is not None
        made: set[Path] = set()
        try:
            for rel, src, _ in files:
                dst = self.target.joinpath(*rel.split("/"))
                for parent in reversed(dst.relative_to(self.target).parents[:-1]):
                    d = self.target / parent
                    if d not in made:
                        d.mkdir(exist_ok=True)
                        made.add(d)
                copy_file(src, dst, meter, fsync=True)
            for d in sorted(made, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(d)
            fsync_dir(self.target)
        except OSError as exc:
            if self._gone():
                raise MediaError("removed", "the USB stick was removed while it was written") \
                    from exc
            if exc.errno in (errno.ENOSPC, errno.EFBIG):
                raise MediaError("too-small", "the USB stick is full") from exc
            raise MediaError("write-failed",
                             f"writing to the USB stick failed: {exc.strerror or exc}") from exc

    def _write_image(self, root: Path, meter: Meter, cancel) -> None:
        dirs = sorted((rel for rel, _, is_dir, _ in walk_tree(root) if is_dir),
                      key=lambda d: (d.count("/"), d))
        for d in dirs:
            done = self._mtools("mmd", "-D", "s", "::/" + d, cancel=cancel)
            # mmd -D s exits 1 without a word for a folder that exists (a stick
            # pulled mid-copy and plugged in again holds the folders already).
            if done.returncode != 0 and "already exists" not in done.text() and \
                    self._mtools("mdir", "-b", "::/" + d, cancel=cancel).returncode != 0:
                self._image_failure(done)
        # One mcopy per directory (and batch): mtools reads the FAT once per
        # run.  The root's files come last, DICOMDIR the very last.
        for d, items in itertools.groupby(_fileset_files(root),
                                          key=lambda item: item[0].rpartition("/")[0]):
            while batch := list(itertools.islice(items, self.MCOPY_BATCH)):
                done = self._mtools("mcopy", "-p", "-m", "-D", "o", "-Q",
                                    *[str(p) for _, p, _ in batch],
                                    "::/" + d + ("/" if d else ""), cancel=cancel)
                if done.returncode != 0:
                    self._image_failure(done)
                meter.add(sum(size for _, _, size in batch))
        try:
            fd = os.open(self._image_file(), os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise MediaError("removed", "the USB image went away while it was written") from exc

    def _image_failure(self, done: proc.Finished):
        text = done.text()[-200:]
        if self._gone():
            raise MediaError("removed", "the USB stick was removed while it was written")
        if "full" in text.lower() or "no free" in text.lower():
            raise MediaError("too-small", f"the USB stick is full: {text}")
        raise MediaError("write-failed", f"writing to the USB stick failed: {text}")

    def verify(self, iso_path: Path | None = None, files=None, *,
               progress: Progress | None = None, cancel: threading.Event | None = None,
               iso_sha256: str | None = None) -> None:
        """Read every file of the manifest back from the stick and compare its SHA-256."""
        if files is None:
            raise ValueError("UsbWriter.verify needs the file-set's manifest (files)")
        if self.target is not None:
            verify_tree(self.target, files, progress=progress, cancel=cancel, uncached=True,
                        gone=self._gone)
            return
        meter = Meter(sum(size for _, _, size in files), progress, cancel)
        for rel, sha, size in files:
            h = hashlib.sha256()
            got = 0

            def sink(data: bytes, h=h) -> None:
                nonlocal got
                h.update(data)
                got += len(data)
                meter.add(len(data))

            done = self._mtools("mcopy", "::/" + rel, "-", cancel=cancel, stdout_sink=sink)
            if self._gone():
                raise MediaError("removed", "the USB stick was removed while it was read back")
            if done.returncode != 0:
                raise MediaError("verify-failed", f"{rel} cannot be read back from the stick")
            if got != size or h.hexdigest() != sha:
                raise MediaError("verify-failed", f"{rel} differs on the stick")
        meter.finish()

    def eject(self, cancel: threading.Event | None = None) -> None:
        """Flush and unmount the stick (nothing to do for an image)."""
        if self.target is None or not os.path.ismount(self.target):
            return
        os.sync()
        try:
            subprocess.run(["umount", str(self.target)], check=True, capture_output=True,
                           timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise MediaError("write-failed", f"cannot unmount {self.target}: {exc}") from exc


# -- folder -------------------------------------------------------------------------------

class FolderWriter:
    """A folder that receives one ISO image per medium (``make run`` without a drive)."""

    kind = "folder"
    needs_iso = True

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FolderWriter({str(self.directory)!r})"

    block_bytes = BLOCK

    def usable_bytes(self, info: MediumInfo) -> int:
        return info.free_bytes

    def _existing(self) -> Path:
        p = self.directory
        while not p.exists() and p != p.parent:
            p = p.parent
        return p

    def probe(self, cancel: threading.Event | None = None) -> MediumInfo:
        base = self._existing()
        if not base.is_dir():
            return MediumInfo(MediumState.NO_MEDIUM, 0, 0, f"{self.directory} is not a folder")
        st = os.statvfs(base)
        capacity, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        if not os.access(base, os.W_OK):
            return MediumInfo(MediumState.CLOSED, capacity, 0,
                              f"{self.directory} is not writable", "folder")
        return MediumInfo(MediumState.BLANK, capacity, free,
                          f"folder {self.directory}, {_mb(free)} free", "folder")

    def target_for(self, iso_path: Path) -> Path:
        return self.directory / Path(iso_path).name

    def write(self, iso_path: Path, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> Path:
        """Copy the image into the folder (atomically, durably); return where it is."""
        iso_path = Path(iso_path)
        size = iso_path.stat().st_size
        info = self.probe(cancel)
        if info.state is MediumState.NO_MEDIUM:
            raise MediaError("no-medium", info.description)
        if info.state is MediumState.CLOSED:
            raise MediaError("not-blank", info.description)
        _needs("image", size, info)
        dst = self.target_for(iso_path)
        partial = dst.with_name(dst.name + ".partial")
        meter = Meter(size, progress, cancel)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            copy_file(iso_path, partial, meter, fsync=True)
            os.replace(partial, dst)
            fsync_dir(self.directory)
        except OSError as exc:
            kind = "too-small" if exc.errno == errno.ENOSPC else "write-failed"
            raise MediaError(kind, f"cannot write {dst}: {exc.strerror or exc}") from exc
        finally:
            try:
                partial.unlink()
            except OSError:
                pass
        meter.finish()
        return dst

    def verify(self, iso_path: Path | None = None, files=None, *, iso_sha256: str | None = None,
               progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
        """Re-read the copy in the folder (not from the cache) and compare it with the image."""
        if iso_path is None:
            raise ValueError("FolderWriter.verify needs the ISO image it wrote")
        iso_path = Path(iso_path)
        dst = self.target_for(iso_path)
        size = iso_path.stat().st_size
        meter = _image_meter(size, files, iso_sha256, progress, cancel)
        expected = _check_image(iso_path, files, iso_sha256, meter)
        try:
            got, got_size = sha256_file(dst, meter, uncached=True)
        except FileNotFoundError:
            raise MediaError("verify-failed", f"{dst} is missing") from None
        except OSError as exc:
            raise MediaError("verify-failed", f"cannot read {dst} back: {exc.strerror}") from exc
        if got != expected or got_size != size:
            raise MediaError("verify-failed", f"{dst} differs from the image")
        meter.finish()

    def eject(self, cancel: threading.Event | None = None) -> None:
        """Nothing to give back."""


Writer = OpticalWriter | UsbWriter | FolderWriter


def writer_for(kind: str, **settings) -> Writer:
    """A writer from its kind and settings (the names of ``[media.<kind>]`` are accepted)."""
    if kind == "optical":
        return OpticalWriter(settings["device"], settings.get("xorriso", "xorriso"),
                             settings.get("eject", True), speed=settings.get("speed", ""),
                             overwrite=settings.get("overwrite", False))
    if kind == "usb":
        target = settings.get("target", settings.get("mount_point"))
        image = settings.get("image")
        return UsbWriter(target if image is None else None, image,
                         require_mount=settings.get("require_mount", True))
    if kind == "folder":
        return FolderWriter(settings["directory"])
    raise ValueError(f"unknown writer kind {kind!r} (optical, usb or folder)")


def writer_from_config(media) -> Writer:
    """The writer a ``MediaSection`` (``config.media``) configures."""
    if media.writer == "optical":
        o = media.optical
        return writer_for("optical", device=o.device, speed=o.speed, eject=o.eject)
    if media.writer == "usb":
        return writer_for("usb", mount_point=media.usb.mount_point, image=media.usb.image)
    return writer_for("folder", directory=media.folder.directory)

