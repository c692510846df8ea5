"""The instance spool and its index.

Layout under ``<state_dir>/<service>/``::

    tmp/                      incoming data (same file system: rename, not copy)
    spool/<study>/<sop>_<token>.dcm
    index.db                  SQLite: instances, service state, queues of the service
    clean-shutdown            present only after a graceful stop

Directory and file names come from UIDs with everything but digits and dots
replaced (never from patient data); the random token means a replacement
never overwrites the file a committed row points at.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import re
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from .db import Database, Migration
from .fsutil import fsync_dir, makedirs_durable
from .groupcommit import GroupCommit
from .header import INDEX_KEYWORDS as _INDEX_KEYWORDS
from .header import SIMPLE_CODECS as _SIMPLE_CODECS
from .header import STRIP_BOTH as _STRIP_BOTH
from .header import Truncated as _Truncated
from .header import parse_header
from .journal import JOURNAL_MAX_BYTES, Flusher, restore

LOGGER = logging.getLogger("dicombox.store")

MIGRATIONS = [
    Migration("instances-1", """
        CREATE TABLE instances (
            id INTEGER PRIMARY KEY,
            sop_instance_uid TEXT NOT NULL UNIQUE,
            sop_class_uid TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL,
            series_instance_uid TEXT NOT NULL,
            patient_id TEXT NOT NULL DEFAULT '',
            patient_name TEXT NOT NULL DEFAULT '',
            patient_birth_date TEXT NOT NULL DEFAULT '',
            patient_sex TEXT NOT NULL DEFAULT '',
            study_date TEXT NOT NULL DEFAULT '',
            study_time TEXT NOT NULL DEFAULT '',
            study_id TEXT NOT NULL DEFAULT '',
            study_description TEXT NOT NULL DEFAULT '',
            accession_number TEXT NOT NULL DEFAULT '',
            modality TEXT NOT NULL DEFAULT '',
            series_number TEXT NOT NULL DEFAULT '',
            series_description TEXT NOT NULL DEFAULT '',
            instance_number TEXT NOT NULL DEFAULT '',
            institution_name TEXT NOT NULL DEFAULT '',
            body_part_examined TEXT NOT NULL DEFAULT '',
            specific_character_set TEXT NOT NULL DEFAULT '',
            transfer_syntax_uid TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            path TEXT NOT NULL,
            calling_aet TEXT NOT NULL DEFAULT '',
            called_aet TEXT NOT NULL DEFAULT '',
            peer_address TEXT NOT NULL DEFAULT '',
            received_at REAL NOT NULL
        );
        CREATE INDEX instances_study ON instances(study_instance_uid);
        CREATE INDEX instances_patient ON instances(patient_id);
        CREATE INDEX instances_received ON instances(received_at);
        CREATE INDEX instances_path ON instances(path);
        CREATE TABLE service_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
    """),
    # Bytes of small instances until their files are durable (journal.py).
    Migration("instances-2", """
        CREATE TABLE pending_files (
            path TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )
    """),
]

_NOT_UID = re.compile(r"[^0-9.]")


def sanitise_uid(uid: str) -> str:
    """A file-name-safe form of a UID: digits and dots only, at most 64 characters."""
    cleaned = _NOT_UID.sub("_", uid.strip().rstrip("\0"))[:64]
    if not cleaned or cleaned in (".", ".."):
        cleaned = "_"
    return cleaned


class DatasetError(ValueError):
    """The received data cannot be decoded as a DICOM dataset."""


class OutOfSpace(OSError):
    """Free space is below the configured reserve."""


class DuplicateKept(Exception):
    """The instance was already stored and the policy keeps the first copy."""


@dataclass
class InstanceInfo:
    """The identifying attributes indexed for every instance."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    study_description: str = ""
    accession_number: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""
    institution_name: str = ""
    body_part_examined: str = ""
    specific_character_set: str = ""
    size: int = 0
    sha256: str = ""
    path: str = ""
    calling_aet: str = ""
    called_aet: str = ""
    peer_address: str = ""
    received_at: float = 0.0


_INFO_FIELDS = [f.name for f in fields(InstanceInfo)]
_INSERT = (f"INSERT INTO instances ({', '.join(_INFO_FIELDS)}) "
           f"VALUES ({', '.join('?' for _ in _INFO_FIELDS)})")
_UPDATE = f"UPDATE instances SET {', '.join(f'{c} = ?' for c in _INFO_FIELDS)} WHERE id = ?"
class _Head(io.BytesIO):
    """The first bytes of a larger file: reading past them raises
    :class:`~.header.Truncated` (the caller then parses the file itself)."""

    def read(self, size=-1):
        data = super().read(size)
        if size is None or size < 0 or len(data) < size:
            raise _Truncated
        return data


def read_header(path: Path, head: bytes | None = None, complete: bool = False) -> dict:
    """The indexed attributes of a Part 10 file (read up to the pixel data).

    ``head`` may hold the file's first bytes (kept in memory while it was
    received; ``complete`` when that is the whole file): the header is
    parsed from them when they suffice, else from the file.  The bytes are
    read by :func:`~.header.parse_header`; pydicom parses what that declines,
    so the values, and the files refused, are pydicom's.  Returns the
    attributes of ``INDEX_KEYWORDS`` with the specific character set and
    the transfer syntax UID.  Raises :class:`DatasetError` when the file
    cannot be decoded.
    """
    if head is not None:
        try:
            values = parse_header(head, complete)
            if values is None:
                values = _parse_header(io.BytesIO(head) if complete else _Head(head))
            return values
        except _Truncated:
            pass
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            values = parse_header(data, complete=True)
    except (OSError, ValueError):   # no such file, or an empty one (cannot be mapped)
        values = None
    return values if values is not None else _parse_header(path)


def _parse_header(source) -> dict:
    """``read_header`` by pydicom: every file the fast parse declines."""
    from pydicom import dcmread
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.errors import BytesLengthException, InvalidDicomError
    from pydicom.multival import MultiValue

    try:
        ds = dcmread(source, stop_before_pixels=True)
        cs_elem = ds.get_item(0x00080005)
        if isinstance(cs_elem, RawDataElement):
            raw_cs = (cs_elem.value or b"").decode("ascii", "replace")
            charsets = [c.strip(" \0") for c in raw_cs.split("\\")]
        else:
            cs = ds.get("SpecificCharacterSet", "")
            charsets = list(cs) if isinstance(cs, (list, MultiValue)) else [str(cs or "")]
        charset = "\\".join(charsets) if any(charsets) else ""
        codec = _SIMPLE_CODECS.get(charset)
        values = {}
        for name, keyword in _INDEX_KEYWORDS.items():
            tag = tag_for_keyword(keyword)
            elem = ds.get_item(tag)
            if elem is None:
                values[name] = ""
            elif codec is not None and isinstance(elem, RawDataElement) \
                    and isinstance(elem.value, bytes) and b"\\" not in elem.value:
                text = elem.value.decode(codec, "replace")
                vr = elem.VR or dictionary_VR(tag)
                values[name] = (text.strip(" \0") if vr in _STRIP_BOTH
                                else text.rstrip(" \0"))
            else:
                value = ds.get(keyword, "")
                values[name] = "" if value is None else str(value)
        values["specific_character_set"] = charset
        values["transfer_syntax_uid"] = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except _Truncated:
        raise
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            OSError, OverflowError, NotImplementedError, LookupError, struct.error,
            zlib.error, BytesLengthException, RecursionError) as exc:
        raise DatasetError(f"cannot decode the dataset: {exc}") from exc
    return values


def file_digest(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class InstanceStore:
    """The spool and index of one service (``router``, ``media``…)."""

    def __init__(self, state_dir: Path, name: str, reserve_bytes: int = 0,
                 duplicates: str = "replace", migrations: Sequence[Migration] = ()):
        self.root = Path(state_dir) / name
        self.name = name
        self.spool_dir = self.root / "spool"
        self.tmp_dir = self.root / "tmp"
        self.reserve_bytes = reserve_bytes
        self.duplicates = duplicates
        makedirs_durable(self.spool_dir)
        makedirs_durable(self.tmp_dir)
        self._clean_marker = self.root / "clean-shutdown"
        self._fresh = not (self.root / "index.db").exists()
        self.db = Database(self.root / "index.db", [*MIGRATIONS, *migrations])
        self._group = GroupCommit(self.db)
        self._flusher: Flusher | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------

    def recover(self) -> dict:
        """Remove what an interrupted run left behind; return what was done.

        Small instances whose files were not yet known to be durable are
        rewritten from the bytes committed with their rows (journal.py).
        Temporary files are never acknowledged data and are removed.  After
        an unclean stop, spool files that no committed row points at (renamed
        but not yet indexed when the process died) are removed too: they
        were never acknowledged either.
        """
        restored = restore(self.db, self.spool_dir, self.tmp_dir)
        removed_tmp = 0
        for entry in os.scandir(self.tmp_dir):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed_tmp += 1
            except FileNotFoundError:
                pass
        orphans = 0
        clean = self._clean_marker.exists() or self._fresh
        if not clean:
            orphans = self._remove_orphans()
        elif self._clean_marker.exists():
            os.unlink(self._clean_marker)
            fsync_dir(self.root)
        if removed_tmp or orphans or restored:
            LOGGER.warning("%s: recovery rewrote %d journaled files, removed %d temporary "
                           "and %d unindexed files", self.name, restored, removed_tmp, orphans)
        return {"temporary": removed_tmp, "orphans": orphans, "clean": clean,
                "restored": restored}

    def _remove_orphans(self) -> int:
        removed = 0
        for study in os.scandir(self.spool_dir):
            if not study.is_dir(follow_symlinks=False):
                continue
            prefix = study.name + "/"
            known = {r[0] for r in self.db.query(
                "SELECT path FROM instances WHERE path >= ? AND path < ?",
                (prefix, study.name + "0"))}
            for entry in os.scandir(study.path):
                rel = prefix + entry.name
                if rel not in known:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def mark_clean(self) -> None:
        self._clean_marker.touch()
        fsync_dir(self.root)

    def close(self, clean: bool = True) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        if clean:
            self.mark_clean()
        self.db.close()

    # -- receiving -------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int = 0) -> None:
        free = self.free_bytes()
        if free - incoming < self.reserve_bytes:
            raise OutOfSpace(
                f"{free // (1024 * 1024)} MB free, reserve is "
                f"{self.reserve_bytes // (1024 * 1024)} MB")

    def path_of(self, info_or_path) -> Path:
        rel = info_or_path if isinstance(info_or_path, str) else info_or_path["path"]
        return self.spool_dir / rel

    def ingest(self, tmp_path: Path, info: InstanceInfo,
               in_transaction: Callable | None = None,
               checksum: Callable[[], str] | None = None,
               data: bytes | None = None) -> InstanceInfo:
        """Make the received file at ``tmp_path`` durable and indexed.

        ``info`` must carry the identifying attributes; path and time are
        filled in here, and size and checksum too unless the caller computed
        them already (the Storage SCP hashes while receiving: it passes
        ``checksum``, called once the file is fsync'd, so that the hash of
        its last bytes is computed while the disk works).
        ``in_transaction(conn, instance_id, replaced)`` runs inside the
        committing transaction (routing uses it to queue the instance
        atomically with its row); that transaction may also commit other
        instances received at the same time, each in its own savepoint.
        Returns only once the file, its directory entry and its row are
        durable, or, for a small instance whose whole content the caller
        passes as ``data``, once those bytes are committed with its row
        (the file follows in the background: see journal.py).  Raises
        :class:`DuplicateKept` when the policy keeps an existing copy.
        """
        tmp_path = Path(tmp_path)
        existing = self.db.query_one(
            "SELECT path FROM instances WHERE sop_instance_uid = ?", (info.sop_instance_uid,))
        if existing is not None and self.duplicates == "keep":
            os.unlink(tmp_path)
            raise DuplicateKept(info.sop_instance_uid)
        if checksum is None and not (info.sha256 and info.size):
            info.sha256, info.size = file_digest(tmp_path)
        study_dir = self.spool_dir / sanitise_uid(info.study_instance_uid)
        if not study_dir.exists():
            makedirs_durable(study_dir)
        name = f"{sanitise_uid(info.sop_instance_uid)}_{secrets.token_hex(4)}.dcm"
        dest = study_dir / name
        # Renamed before the file is fsync'd: a journalling file system then
        # makes the data and the new name durable in one commit, and the
        # directory fsync below finds little left to do.  Until its row is
        # committed, the file is an orphan that recovery removes.
        os.rename(tmp_path, dest)
        journaled = data is not None and len(data) <= JOURNAL_MAX_BYTES
        try:
            if not journaled:
                fd = os.open(dest, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if checksum is not None:
                info.sha256 = checksum()
        except BaseException:
            _unlink(dest)
            raise
        info.path = f"{study_dir.name}/{name}"
        info.received_at = info.received_at or time.time()
        row_values = [getattr(info, c) for c in _INFO_FIELDS]

        def write_rows(conn):
            row = conn.execute("SELECT id, path FROM instances WHERE sop_instance_uid = ?",
                               (info.sop_instance_uid,)).fetchone()
            if row is None:
                instance_id = conn.execute(_INSERT, row_values).lastrowid
                previous = None
            else:
                instance_id, previous = row["id"], row["path"]
                conn.execute(_UPDATE, [*row_values, instance_id])
                conn.execute("DELETE FROM pending_files WHERE path = ?", (previous,))
            if journaled:
                conn.execute("INSERT OR REPLACE INTO pending_files (path, data) VALUES (?, ?)",
                             (info.path, data))
            if in_transaction is not None:
                in_transaction(conn, instance_id, previous is not None)
            return previous

        try:
            # fsync of the spool directory and the commit, shared with every
            # instance that became ready meanwhile (see groupcommit.py).
            old_path = self._group.submit([] if journaled else [study_dir], write_rows)
        except BaseException:
            _unlink(dest)
            raise
        if journaled:
            self._flusher_started().add(info.path)
        if old_path and old_path != info.path:
            _unlink(self.spool_dir / old_path)
        return info

    def _flusher_started(self) -> Flusher:
        with self._lock:
            if self._flusher is None:
                self._flusher = Flusher(self.db, self.spool_dir, self.name)
            return self._flusher

    def flush_journal(self, timeout: float | None = None) -> bool:
        """Wait until every journaled file is durable (tests, clean stops)."""
        flusher = self._flusher
        return True if flusher is None else flusher.drain(timeout)

    # -- reading -----------------------------------------------------------------

    def get(self, sop_instance_uid: str):
        return self.db.query_one("SELECT * FROM instances WHERE sop_instance_uid = ?",
                                 (sop_instance_uid,))

    def search(self, patient: str | None = None, study: str | None = None,
               calling_aet: str | None = None, since: float | None = None,
               until: float | None = None, limit: int | None = None):
        where, params = [], []
        if patient:
            where.append("(patient_id LIKE ? OR patient_name LIKE ?)")
            params += [_like(patient), _like(patient)]
        if study:
            where.append("(study_instance_uid = ? OR accession_number = ?)")
            params += [study, study]
        if calling_aet:
            where.append("calling_aet = ?")
            params.append(calling_aet)
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        if until is not None:
            where.append("received_at < ?")
            params.append(until)
        sql = "SELECT * FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self.db.query(sql, params)

    def totals(self) -> dict:
        row = self.db.query_one(
            "SELECT COUNT(*) AS instances, COALESCE(SUM(size), 0) AS bytes, "
            "COUNT(DISTINCT study_instance_uid) AS studies FROM instances")
        return dict(row)

    def set_state(self, key: str, value: str) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO service_state VALUES (?, ?, ?) ON CONFLICT(key) "
                         "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                         (key, value, time.time()))


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _like(text: str) -> str:
    return text.replace("*", "%") if "*" in text else f"%{text}%"
