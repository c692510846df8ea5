"""The DICOMDIR of a file-set, encoded record by record as the headers are read.

pydicom's :class:`~pydicom.fileset.FileSet` keeps, until it writes, a
Dataset per directory record, a RecordNode, a FileInstance and a staged
placeholder file per instance, then encodes the whole Directory Record
Sequence in memory: about 10 kB per instance, some 100 MB for a job of
10 000 images on a box whose services live in 80 MB.  Here each record is
encoded once, when its instance's header is read, into a spill file (an
unnamed temporary file next to the file-set).  Memory keeps where each
PATIENT, STUDY and SERIES record lies in that file; where each leaf (IMAGE,
SR DOCUMENT...) lies goes into a table of the build's scratch database
(:mod:`.scratch`) as it is attached, so nothing is held per instance.
:meth:`Directory.write` then sizes every subtree (a record's size is its own
plus the sum of its leaves' sizes, counted as they were attached), so each
record's offsets are known before it is written, and copies the records in
order, filling in the offsets and the Referenced File IDs.

The bytes are those ``FileSet.write()`` produces for the same records: the
records come from pydicom's own record creators (``DIRECTORY_RECORDERS``,
which the package pins with pydicom 3.0), are encoded with its
``write_dataset`` (elements in tag order, explicit-length items), and the
tree is ordered and named as pydicom orders and names it
(``PT000000/ST000000/SE000000/IM000000``: the index of a record among its
siblings, in the order the leaves were attached).
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterator
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import (
    _PREFIXES,
    DIRECTORY_RECORDERS,
    _four_level_record_type,
    _single_level_record_type,
)
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

# Every record starts with the four elements the file-set sets itself, in tag
# order (Explicit VR Little Endian): where their values sit in its encoding.
_HEAD = (
    (0, b"\x04\x00\x00\x14UL\x04\x00"),    # (0004,1400) Offset of the Next Directory Record
    (12, b"\x04\x00\x10\x14US\x02\x00"),   # (0004,1410) Record In-use Flag
    (22, b"\x04\x00\x20\x14UL\x04\x00"),   # (0004,1420) Offset of Referenced Lower-Level ...
    (34, b"\x04\x00\x30\x14CS"),           # (0004,1430) Directory Record Type
)
_NEXT_AT = 8
_LOWER_AT = 30
_TYPE_AT = 34
_FILE_ID_TAG = b"\x04\x00\x00\x15CS"       # (0004,1500) Referenced File ID
_UL = struct.Struct("<I")
_US = struct.Struct("<H")
_ITEM = b"\xfe\xff\x00\xe0"                # (FFFE,E000) Item
_SEQUENCE = b"\x04\x00\x20\x12SQ\x00\x00"  # (0004,1220) Directory Record Sequence

#: pydicom's File ID digits (base 35, no J) when a file-set has more than a
#: million instances; plain decimal digits otherwise.
_ALPHANUMERIC = "0123456789ABCDEFGHIKLMNOPQRSTUVWXYZ"

#: Placeholder File ID components: every component is 8 characters long.
_PLACEHOLDER = "00000000"


def component(prefix: str, index: int, alphanumeric: bool = False) -> str:
    """A File ID component as pydicom names it: ``IM000012`` for the 13th image."""
    chars = _ALPHANUMERIC if alphanumeric else _ALPHANUMERIC[:10]
    suffix = ""
    n = index
    while n:
        suffix += chars[n % len(chars)]
        n //= len(chars)
    name = f"{prefix}{suffix[::-1]:>0{8 - len(prefix)}}"
    if len(name) != 8:
        raise ValueError(f"more than {len(chars) ** (8 - len(prefix))} records in one folder")
    return name


def instance_records(ds: Dataset) -> list[Dataset]:
    """The directory records of an instance, highest level first (as ``FileSet`` makes them).

    Four levels (PATIENT, STUDY, SERIES and the leaf its SOP class needs), or
    one for the SOP classes that stand alone (PALETTE, IMPLANT...).  Raises
    ValueError naming what the instance lacks.
    """
    single = _single_level_record_type(ds)
    types = [single] if single != "PATIENT" else \
        ["PATIENT", "STUDY", "SERIES", _four_level_record_type(ds)]
    records = []
    for record_type in types:
        try:
            record = DIRECTORY_RECORDERS[record_type](ds)
        except ValueError as exc:
            raise ValueError(f"{record_type} record: {exc}") from exc
        record.OffsetOfTheNextDirectoryRecord = 0
        record.RecordInUseFlag = 0xFFFF
        record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
        record.DirectoryRecordType = record_type
        if len(types) > 1 and "SpecificCharacterSet" in ds:
            record.SpecificCharacterSet = ds.SpecificCharacterSet
        records.append(record)
    leaf = records[-1]
    leaf.ReferencedFileID = None
    leaf.ReferencedSOPClassUIDInFile = ds.SOPClassUID
    leaf.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
    leaf.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
    return records


def _record_key(record: Dataset) -> str:
    rtype = record.DirectoryRecordType
    if rtype == "PATIENT":
        return str(record.PatientID)
    if rtype == "STUDY":
        return str(record.get("StudyInstanceUID", ""))
    return str(record.SeriesInstanceUID)


class Record:
    """A PATIENT, STUDY or SERIES record (or the root): where it is in the spill file.

    Its children are numbered in the order they are attached: the records
    below it (``uppers``, each knowing its ``index``) and its leaves, whose
    (position, length) wait in the leaf table of the scratch database, so
    that nothing is kept per instance.  ``component`` is None until the
    record is attached.
    """

    __slots__ = ("id", "pos", "length", "prefix", "parent", "uppers", "count", "leaf_bytes",
                 "index", "component", "size")

    def __init__(self, node_id: int, pos: int, length: int, prefix: str,
                 parent: Record | None):
        self.id = node_id
        self.pos = pos
        self.length = length
        self.prefix = prefix
        self.parent = parent
        self.uppers: list[Record] = []
        self.count = 0              # children attached (records and leaves)
        self.leaf_bytes = 0         # items of the leaves attached: 8 + length each
        self.index = -1             # among the parent's children
        self.component: str | None = None
        self.size = 0


#: A leaf record as :meth:`Directory.add` returns it: (node id of its parent,
#: position and length in the spill file, File ID prefix).  Plain values, so
#: that the caller can keep it in a table of its own until it attaches it.
Leaf = tuple[int, int, int, str]


class Directory:
    """The directory records of a file-set, spilled to ``spill`` as they are made.

    Use: :meth:`add` every instance (any order), then :meth:`attach` each
    leaf in the order the file-set lists them, then :meth:`write`.  The
    leaves attached are kept in ``db`` (a scratch database,
    :mod:`.scratch`): memory holds only the PATIENT, STUDY and SERIES records.
    """

    def __init__(self, spill: BinaryIO, db: sqlite3.Connection):
        self._spill = spill
        self._end = 0
        self._db = db
        db.execute("CREATE TABLE dicomdir_leaves (node INTEGER NOT NULL, idx INTEGER NOT NULL, "
                   "pos INTEGER NOT NULL, length INTEGER NOT NULL, PRIMARY KEY (node, idx)) "
                   "WITHOUT ROWID")
        self._uppers: dict[tuple[str, ...], Record] = {}
        self._root = Record(0, 0, 0, "", None)
        self._nodes: list[Record] = [self._root]
        self._leaves = 0

    def _put(self, record: Dataset, depth: int) -> tuple[int, int]:
        """Encode a record into the spill file; return where it is."""
        if depth:
            # Placeholder File ID of the final length (8 characters per component).
            record.ReferencedFileID = [_PLACEHOLDER] * depth
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_dataset(fp, record)
        body = fp.getvalue()
        for at, expected in _HEAD:
            if body[at:at + len(expected)] != expected:
                raise ValueError(f"unexpected element at {at} of a "
                                 f"{record.DirectoryRecordType} record")
        pos = self._end
        self._spill.write(body)
        self._end += len(body)
        return pos, len(body)

    def add(self, ds: Dataset) -> Leaf:
        """Make and spill the records of an instance (its header, completed).

        Returns its leaf, for :meth:`attach`.  The PATIENT, STUDY and SERIES
        records are made once, from the first instance that needs them.
        Raises ValueError when a record cannot be made.
        """
        records = instance_records(ds)
        leaf = records[-1]
        if leaf.DirectoryRecordType in ("SR DOCUMENT", "KEY OBJECT DOC") \
                and "ContentSequence" in leaf:
            # PS3.3 F.5: the record carries only the items that modify the
            # document's title (HAS CONCEPT MOD), not the whole content tree
            # that pydicom copies (dciodvfy flags it, and it bloats the DICOMDIR).
            keep = [item for item in leaf.ContentSequence
                    if item.get("RelationshipType") == "HAS CONCEPT MOD"]
            if keep:
                leaf.ContentSequence = keep
            else:
                del leaf.ContentSequence
        parent: Record | None = None
        place: tuple[str, ...] = ()
        for record in records[:-1]:
            rtype = record.DirectoryRecordType
            place = place + (f"{rtype}:{_record_key(record)}",)
            node = self._uppers.get(place)
            if node is None:
                node = Record(len(self._nodes), *self._put(record, 0), _PREFIXES[rtype],
                              parent)
                self._nodes.append(node)
                self._uppers[place] = node
            parent = node
        pos, length = self._put(leaf, len(records))
        self._leaves += 1
        return (0 if parent is None else parent.id, pos, length,
                _PREFIXES[leaf.DirectoryRecordType])

    def attach(self, leaf: Leaf) -> str:
        """Put a leaf into the tree after its siblings; return its File ID (``a/b/c/d``)."""
        alphanumeric = self._leaves > 10 ** 6     # as pydicom decides
        node_id, pos, length, prefix = leaf
        holder = self._nodes[node_id]
        chain = []
        node = holder
        while node is not self._root and node.component is None:
            chain.append(node)
            node = node.parent or self._root
        for node in reversed(chain):
            siblings = node.parent or self._root
            node.index = siblings.count
            node.component = component(node.prefix, siblings.count, alphanumeric)
            siblings.count += 1
            siblings.uppers.append(node)
        index = holder.count
        parts = [component(prefix, index, alphanumeric)]
        self._db.execute("INSERT INTO dicomdir_leaves VALUES (?, ?, ?, ?)",
                         (node_id, index, pos, length))
        holder.count += 1
        holder.leaf_bytes += 8 + length
        node = holder
        while node is not self._root:
            parts.append(node.component)
            node = node.parent or self._root
        return "/".join(reversed(parts))

    # -- writing ----------------------------------------------------------------------

    @staticmethod
    def _size(node: Record) -> int:
        """Bytes of the items of ``node``'s children and everything below them
        (sets Record.size of the records below)."""
        total = node.leaf_bytes
        for child in node.uppers:
            child.size = 8 + child.length + Directory._size(child)
            total += child.size
        return total

    def _leaf_rows(self, node: Record) -> Iterator[tuple[int, int, int]]:
        """(index, position, length) of ``node``'s leaves, in order."""
        if not node.leaf_bytes:
            return iter(())
        return self._db.execute("SELECT idx, pos, length FROM dicomdir_leaves WHERE node = ? "
                                "ORDER BY idx", (node.id,))

    def write(self, path: os.PathLike | str, fileset_id: str, uid: str | None = None) -> None:
        """Write the DICOMDIR to ``path`` (no fsync: the caller syncs the whole tree)."""
        self._spill.flush()
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = uid or generate_uid()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        ds = Dataset()
        ds.FileSetID = fileset_id
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
        ds.FileSetConsistencyFlag = 0
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        write_dataset(fp, ds[:0x00041200])
        first_at = fp.tell() + 8                 # value of (0004,1200); (0004,1202) follows
        write_dataset(fp, ds[0x00041200:0x00041220])
        head = bytearray(fp.getvalue())
        root = self._root
        total = self._size(root)
        start = len(head) + 12                   # the first item's tag
        if root.count:
            last = root.count - 1
            if root.uppers and root.uppers[-1].index == last:
                last_size = root.uppers[-1].size
            else:
                (length,) = self._db.execute(
                    "SELECT length FROM dicomdir_leaves WHERE node = 0 AND idx = ?",
                    (last,)).fetchone()
                last_size = 8 + length
            _UL.pack_into(head, first_at, start)
            _UL.pack_into(head, first_at + 12, start + total - last_size)
        with open(path, "wb", buffering=1 << 20) as out:
            out.write(head)
            out.write(_SEQUENCE + _UL.pack(total))
            self._emit(out, root, start, [], self._leaves > 10 ** 6)

    def _emit(self, out: BinaryIO, node: Record, offset: int, path: list[str],
              alphanumeric: bool) -> None:
        """Write the items of ``node``'s children (and below) starting at file offset ``offset``."""
        fd = self._spill.fileno()
        uppers = iter(node.uppers)
        upper = next(uppers, None)
        leaves = self._leaf_rows(node)
        last = node.count - 1
        for i in range(node.count):
            leaf = upper is None or upper.index != i
            if leaf:
                index, pos, length = next(leaves)
                if index != i:
                    raise ValueError("the directory's leaves are out of order")
                size = 8 + length
                child = None
            else:
                child, upper = upper, next(uppers, None)
                pos, length, size = child.pos, child.length, child.size
            body = bytearray(os.pread(fd, length, pos))
            if len(body) != length:
                raise OSError("the spilled directory records are incomplete")
            if i < last:
                _UL.pack_into(body, _NEXT_AT, offset + size)
            if leaf:
                _set_file_id(body, path, i, alphanumeric)
            elif child.count:
                _UL.pack_into(body, _LOWER_AT, offset + 8 + length)
            out.write(_ITEM + _UL.pack(length))
            out.write(body)
            if child is not None:
                self._emit(out, child, offset + 8 + length, path + [child.component],
                           alphanumeric)
            offset += size


def _set_file_id(body: bytearray, path: list[str], index: int, alphanumeric: bool) -> None:
    """Fill in a leaf's Referenced File ID (its placeholder has the final length)."""
    (type_length,) = _US.unpack_from(body, _TYPE_AT + 6)
    rtype = bytes(body[_TYPE_AT + 8:_TYPE_AT + 8 + type_length]).decode("ascii").strip()
    at = _TYPE_AT + 8 + type_length
    if body[at:at + 6] != _FILE_ID_TAG:
        raise ValueError(f"a {rtype} record without its Referenced File ID")
    (length,) = _US.unpack_from(body, at + 6)
    value = "\\".join(path + [component(_PREFIXES[rtype], index, alphanumeric)]).encode("ascii")
    value += b" " * (len(value) % 2)
    if len(value) != length:
        raise ValueError(f"a {rtype} record's Referenced File ID changed length")
    body[at + 8:at + 8 + length] = value
