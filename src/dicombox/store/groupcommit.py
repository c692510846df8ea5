"""Group commit: one directory fsync and one SQLite commit for every
instance that became ready while the previous commit was being made.

Each receiving thread makes its own file durable (fsync, rename) and then
calls :meth:`GroupCommit.submit` with the directory that gained the file and
a function that writes the instance's rows.  The first thread to arrive
becomes the *leader*: it takes every request queued so far, fsyncs each
distinct directory once, runs all the functions in one transaction (each in
its own savepoint, so one failing request does not undo the others) and
commits once, with ``synchronous=FULL``.  Requests that arrive meanwhile
wait for the next round, led by one of them.  ``submit`` returns only after
the commit that covers its own request, so a C-STORE is still answered only
once its own data and row are durable; under load the fsyncs are shared.

With a single sender nothing is batched (there is never more than one
request waiting) and the cost is that of committing alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .fsutil import fsync_dir


class _Request:
    __slots__ = ("dirs", "apply", "done", "result", "error")

    def __init__(self, dirs: Iterable[Path], apply: Callable[[Any], Any]):
        self.dirs = tuple(dirs)
        self.apply = apply
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Batches directory fsyncs and transactions of concurrent writers."""

    def __init__(self, db):
        self.db = db
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._leading = False
        #: (rounds, requests) committed so far: their ratio is the batching.
        self.rounds = 0
        self.requests = 0

    def submit(self, dirs: Iterable[Path], apply: Callable[[Any], Any]) -> Any:
        """Fsync ``dirs``, run ``apply(conn)`` in a committed transaction, and
        return its result once durable (or raise its exception)."""
        req = _Request(dirs, apply)
        with self._cond:
            self._queue.append(req)
            while not req.done and self._leading:
                self._cond.wait()
            if req.done:
                return _outcome(req)
            batch, self._queue = self._queue, []
            self._leading = True
        try:
            self._commit(batch)
        except BaseException as exc:  # noqa: BLE001 - nobody in the batch may see success
            for r in batch:
                if r.error is None:
                    r.error = exc
        finally:
            with self._cond:
                self._leading = False
                for r in batch:
                    r.done = True
                self._cond.notify_all()
        return _outcome(req)

    def _commit(self, batch: list[_Request]) -> None:
        synced: dict[Path, BaseException | None] = {}
        live = []
        for req in batch:
            for d in req.dirs:
                if d not in synced:
                    try:
                        fsync_dir(d)
                        synced[d] = None
                    except OSError as exc:
                        synced[d] = exc
                if synced[d] is not None and req.error is None:
                    req.error = synced[d]
            if req.error is None:
                live.append(req)
        if not live:
            return
        try:
            with self.db.write() as conn:
                for req in live:
                    conn.execute("SAVEPOINT ingest")
                    try:
                        req.result = req.apply(conn)
                    except BaseException as exc:  # noqa: BLE001 - handed to its submitter
                        conn.execute("ROLLBACK TO ingest")
                        req.error = exc
                    conn.execute("RELEASE ingest")
        except BaseException as exc:  # noqa: BLE001 - the commit failed for all
            for req in live:
                if req.error is None:
                    req.error = exc
                req.result = None
            return
        self.rounds += 1
        self.requests += len(live)


def _outcome(req: _Request) -> Any:
    if req.error is not None:
        raise req.error
    return req.result
