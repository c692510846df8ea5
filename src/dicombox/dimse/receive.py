"""Received C-STORE datasets written straight into the store's ``tmp/``.

With ``_config.STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each incoming
dataset, fragment by fragment, into a file it opens with
``tempfile.NamedTemporaryFile`` (looked up in ``pynetdicom.dimse_messages``).
:func:`install` replaces that factory with :class:`SpoolWriter`, which does
what the store would otherwise do afterwards by reading the file again:

- it hashes (SHA-256) and counts every byte as it is written, so the index's
  checksum costs no second read of the file (hashlib releases the GIL on
  large blocks, so this overlaps with the network);
- it keeps the first :data:`HEAD_BYTES` in memory, from which the handler
  parses the header (the identifying attributes come before the pixel data),
  so small instances are never re-opened before they are fsync'd;
- it writes unbuffered to a file created with ``O_EXCL`` in the store's
  ``tmp/`` directory (same file system as the spool: the later rename is
  atomic), taken from a few created ahead by a thread (:class:`_Pool`):
  creating a file (an inode, a directory entry) took a fifth of the
  receiving thread's time for a CT slice, and the sender waits for every
  instance's answer; it asks the kernel to start writing large files out
  while they are still arriving (``sync_file_range``), so the fsync before
  the answer has little left to do;
- beyond the first :data:`INLINE_BYTES`, hashing is done by a lane thread
  (:class:`_Lane`) while the association goes on reading the network and,
  for the last block, while the store fsyncs the file;
- a failed write (a full disk) is kept for the handler, which answers with
  an out-of-resources status instead of the association breaking.

The File Meta Information pynetdicom puts in front of each dataset is
encoded here too (:func:`file_meta_bytes`): building it through pydicom's
``FileMetaDataset`` and ``write_file_meta_info`` cost more than everything
else done per small instance.

The handler finds the writer of a received file through
:func:`writer_for` (keyed by the path pynetdicom reports in
``event.dataset_path``).  Writers are held weakly: a transfer aborted half
way leaves nothing behind in memory, only a temporary file that the router's
housekeeping and start-up recovery remove.

This replaces three module globals of ``pynetdicom.dimse_messages``
(``NamedTemporaryFile``, ``create_file_meta``, ``write_file_meta_info``) and
is tied to pynetdicom 3.0.4, whose ``decode_msg`` calls
``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``, then only
``write``, ``file.flush``, ``name`` and ``close``, and writes the meta as
``write_file_meta_info(file, create_file_meta(sop_class_uid=...,
sop_instance_uid=..., transfer_syntax=...))``; with any other version
:func:`install` leaves pynetdicom alone and the handler falls back to
reading the file.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import io
import itertools
import os
import queue
import secrets
import struct
import threading
import time
import weakref
from pathlib import Path
from typing import NamedTuple

import pynetdicom
from pynetdicom import dimse_messages

from ..store.fsutil import SYNC_FILE_RANGE, SYNC_FILE_RANGE_WRITE
from .ae import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .reactor import PYNETDICOM_VERSION

#: Bytes of each received file kept in memory for the header parse.
HEAD_BYTES = 64 * 1024
#: Unwritten bytes after which the kernel is asked to start writing them out.
WRITEBACK_BYTES = 256 * 1024
#: Bytes of a file hashed by the receiving thread itself; the rest by a lane.
INLINE_BYTES = HEAD_BYTES
#: Bytes a writer may have handed to its lane and not yet hashed.
PENDING_BYTES = 8 * 1024 * 1024
#: Hashing threads shared by every association of the process.
LANES = 2
#: Empty receive files kept created ahead in ``tmp/`` (:class:`_Pool`).
POOL_FILES = 4
#: A file created ahead is replaced once this old: the services' housekeeping
#: removes temporary files untouched for an hour, and a file handed out must
#: never be one of them.
POOL_MAX_AGE = 60.0

_writers: weakref.WeakValueDictionary[str, SpoolWriter] = weakref.WeakValueDictionary()
_lock = threading.Lock()
_state: dict = {"tmp_dir": None, "originals": None, "pool": None}




def _create(tmp_dir: str, suffix: str) -> tuple[int, str]:
    """A new empty file in ``tmp_dir``, open for writing: (descriptor, path)."""
    while True:
        name = os.path.join(tmp_dir, f"rx-{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue


def _discard(fd: int, name: str) -> None:
    os.close(fd)
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


class _Pool(threading.Thread):
    """Keeps :data:`POOL_FILES` empty receive files created ahead in a
    ``tmp/`` directory, so that a received dataset starts on a file that
    exists already and the file system's work of creating one (an inode, a
    directory entry) is done while the association waits for the network.

    A file is handed out at most :data:`POOL_MAX_AGE` seconds after its
    creation; older ones are replaced.  When the pool is empty (a burst, a
    full disk) the writer creates its file itself, as before.  Files left
    created ahead are removed when the pool stops or the process exits,
    and by the store's start-up recovery after a crash (it empties ``tmp/``).
    """

    def __init__(self, tmp_dir: str):
        super().__init__(name="spool-files", daemon=True)
        self.tmp_dir = tmp_dir
        self.pid = os.getpid()
        self._ready: collections.deque[tuple[int, str, float]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopped = False

    def take(self) -> tuple[int, str] | None:
        """A fresh file created ahead, or ``None``."""
        with self._cond:
            self._cond.notify()
            # The oldest is the first; an old one is left for the pool's
            # thread to replace.
            if self._ready and time.monotonic() - self._ready[0][2] < POOL_MAX_AGE:
                fd, name, _created = self._ready.popleft()
                return fd, name
        return None

    def run(self) -> None:
        while True:
            stale = []
            with self._cond:
                while not self._stopped and len(self._ready) >= POOL_FILES and \
                        time.monotonic() - self._ready[0][2] < POOL_MAX_AGE / 2:
                    self._cond.wait(POOL_MAX_AGE / 4)
                if self._stopped:
                    return
                while self._ready and time.monotonic() - self._ready[0][2] >= POOL_MAX_AGE / 2:
                    stale.append(self._ready.popleft())
                missing = POOL_FILES - len(self._ready)
            for fd, name, _created in stale:
                _discard(fd, name)
            for _ in range(missing):
                try:
                    fd, name = _create(self.tmp_dir, ".dcm")
                except OSError:
                    # A full disk or a missing folder: the writers create
                    # (and report) their own; try again later.
                    with self._cond:
                        self._cond.wait(1.0)
                    break
                with self._cond:
                    if self._stopped:
                        _discard(fd, name)
                        return
                    self._ready.append((fd, name, time.monotonic()))

    def stop(self) -> None:
        """Stop creating and remove the files created ahead."""
        with self._cond:
            self._stopped = True
            ready, self._ready = list(self._ready), collections.deque()
            self._cond.notify_all()
        if os.getpid() != self.pid:
            return  # a forked child: the files are its parent's
        for fd, name, _created in ready:
            _discard(fd, name)


class _Lane(threading.Thread):
    """A thread that hashes received blocks for the writers assigned to it,
    in the order they were given.

    hashlib releases the GIL on large blocks, so a lane hashes on another
    core while the association goes on reading the network, and the hash of
    an instance's last block is computed while the file is being fsync'd:
    the checksum costs the receive path almost nothing.
    """

    def __init__(self, index: int):
        super().__init__(name=f"spool-hash-{index}", daemon=True)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            writer, view = self.jobs.get()
            writer._hash_block(view)


_lanes: list[_Lane] = []
_next_lane = itertools.count()


def _lane() -> _Lane:
    """The next lane, round robin (started on first use)."""
    with _lock:
        if not _lanes:
            for i in range(LANES):
                lane = _Lane(i)
                lane.start()
                _lanes.append(lane)
        return _lanes[next(_next_lane) % len(_lanes)]


class SpoolWriter:
    """A write-only temporary file that hashes, counts and keeps its head.

    Blocks are written by the calling thread as they arrive.  The first
    :data:`INLINE_BYTES` are hashed by it too (a small instance never leaves
    it); the hashing of whatever comes after is handed to a :class:`_Lane`,
    at most :data:`PENDING_BYTES` ahead (the caller waits beyond that, so
    memory stays bounded whatever the size of the instance).
    :meth:`hexdigest` waits for the lane.  A write that fails (a full disk)
    is kept in :attr:`error` and nothing more is written, so the handler can
    answer with a clear status instead of the association breaking.
    """

    def __init__(self, tmp_dir: str | os.PathLike, suffix: str = ".dcm",
                 pool: _Pool | None = None):
        made = pool.take() if pool is not None and suffix == ".dcm" else None
        fd, name = made or _create(os.fspath(tmp_dir), suffix)
        self._raw = io.FileIO(fd, "wb", closefd=True)
        self.name = name
        self.size = 0
        self.error: OSError | None = None
        self._started = 0  # bytes whose writeback has been started
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._lane: _Lane | None = None
        self._pending = 0
        self._cond = threading.Condition(threading.Lock())
        with _lock:
            _writers[name] = self

    # pynetdicom calls ``_data_set_file.file.flush()`` after each fragment;
    # writes here are unbuffered, so there is nothing to flush.
    @property
    def file(self) -> SpoolWriter:
        return self

    def flush(self) -> None:
        pass

    def write(self, data) -> int:
        view = memoryview(data)
        n = len(view)
        if len(self._head) < HEAD_BYTES:
            self._head += view[:HEAD_BYTES - len(self._head)]
        self.size += n
        if self.error is None:
            self._write_block(view)
        if self._lane is None and self.size <= INLINE_BYTES:
            self._hash.update(view)
            return n
        if self._lane is None:
            self._lane = _lane()
        with self._cond:
            while self._pending >= PENDING_BYTES:
                self._cond.wait()
            self._pending += n
        # The block is a view of the PDU's own buffer (a new one per PDU),
        # which the lane keeps alive until it is hashed.
        self._lane.jobs.put((self, view))
        return n

    def _write_block(self, view: memoryview) -> None:
        try:
            n, written = len(view), 0
            while written < n:
                written += self._raw.write(view[written:])
        except OSError as exc:
            self.error = exc
            return
        if self.size - self._started >= WRITEBACK_BYTES and SYNC_FILE_RANGE is not None:
            # Start writing back what arrived so far; it does not wait for
            # the disk, it only spares the final fsync most of the work.
            SYNC_FILE_RANGE(self._raw.fileno(), self._started, self.size - self._started,
                             SYNC_FILE_RANGE_WRITE)
            self._started = self.size

    def _hash_block(self, view: memoryview) -> None:
        try:
            self._hash.update(view)
        finally:
            with self._cond:
                self._pending -= len(view)
                self._cond.notify_all()

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    @property
    def complete_in_head(self) -> bool:
        """Whether :attr:`head` holds the whole file."""
        return self.size == len(self._head)

    def hexdigest(self) -> str:
        """SHA-256 of every byte given (waits for the lane)."""
        with self._cond:
            while self._pending:
                self._cond.wait()
        return self._hash.hexdigest()


class FileMeta(NamedTuple):
    """What pynetdicom knows of a received dataset when it opens its file."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def create_file_meta(*, sop_class_uid, sop_instance_uid, transfer_syntax) -> FileMeta:
    return FileMeta(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.strip().encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(meta: FileMeta) -> bytes:
    """Group 0002 in Explicit VR Little Endian, as PS3.10 7.1 lays it out."""
    body = b"".join((
        _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, 0x0002, b"UI", _padded(meta.sop_class_uid, b"\0")),
        _element(0x0002, 0x0003, b"UI", _padded(meta.sop_instance_uid, b"\0")),
        _element(0x0002, 0x0010, b"UI", _padded(meta.transfer_syntax, b"\0")),
        _element(0x0002, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\0")),
        _element(0x0002, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ))
    return _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def write_file_meta_info(fp, file_meta, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, FileMeta):
        fp.write(file_meta_bytes(file_meta))
    else:
        _state["originals"]["write_file_meta_info"](fp, file_meta, enforce_standard)


_REPLACED = {"NamedTemporaryFile": None, "create_file_meta": create_file_meta,
             "write_file_meta_info": write_file_meta_info}


def _factory(*_args, suffix: str = ".dcm", **_kwargs) -> SpoolWriter:
    tmp_dir = _state["tmp_dir"]
    assert tmp_dir is not None
    return SpoolWriter(tmp_dir, suffix=suffix, pool=_state["pool"])


def _stop_pool() -> None:
    pool, _state["pool"] = _state["pool"], None
    if pool is not None:
        pool.stop()


atexit.register(_stop_pool)


def install(tmp_dir: Path) -> bool:
    """Write received datasets through :class:`SpoolWriter` into ``tmp_dir``.

    Process-wide, like pynetdicom's own ``_config`` switches: each service
    runs in its own process and owns one store.  Returns ``False`` (and
    changes nothing) on a pynetdicom version other than the one this module
    was written against.
    """
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        return False
    _state["tmp_dir"] = str(tmp_dir)
    _stop_pool()
    _state["pool"] = _Pool(str(tmp_dir))
    _state["pool"].start()
    if _state["originals"] is None:
        _state["originals"] = {name: getattr(dimse_messages, name) for name in _REPLACED}
    for name, replacement in _REPLACED.items():
        setattr(dimse_messages, name, replacement or _factory)
    return True


def uninstall() -> None:
    """Give pynetdicom its own temporary files and file meta back."""
    _stop_pool()
    if _state["originals"] is not None:
        for name, original in _state["originals"].items():
            setattr(dimse_messages, name, original)
        _state["originals"] = None


def writer_for(path: str | os.PathLike | None) -> SpoolWriter | None:
    """The writer that received the file at ``path``, if this module wrote it."""
    if path is None:
        return None
    with _lock:
        return _writers.get(str(path))
