"""Durable storage: the spool of received files and the SQLite indexes.

The durability contract: a file is written to ``tmp/``, fsync'd, renamed into
the spool, the spool directory fsync'd, and its row committed in SQLite (WAL,
``synchronous=FULL``) before anything is acknowledged.
"""

from .db import Database, Migration
from .fsutil import atomic_write, fsync_dir
from .instances import (
    DatasetError,
    DuplicateKept,
    InstanceInfo,
    InstanceStore,
    OutOfSpace,
    read_header,
    sanitise_uid,
)

__all__ = [
    "Database", "Migration", "atomic_write", "fsync_dir", "DatasetError", "DuplicateKept",
    "InstanceInfo", "InstanceStore", "OutOfSpace", "read_header", "sanitise_uid",
]
