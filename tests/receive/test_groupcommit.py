"""Group commit: concurrent ingests share fsyncs and transactions, and each
one still succeeds or fails on its own."""

import os
import sqlite3
import threading

import pytest

from dicombox.store import InstanceInfo, InstanceStore
from dicombox.store.groupcommit import GroupCommit


def _info(i: int, study: str = "1.2.3") -> InstanceInfo:
    return InstanceInfo(sop_instance_uid=f"1.2.3.4.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                        study_instance_uid=study, series_instance_uid="1.2.3.5",
                        transfer_syntax_uid="1.2.840.10008.1.2.1")


def _tmp_file(store: InstanceStore, i: int) -> str:
    path = store.tmp_dir / f"in-{i}.dcm"
    path.write_bytes(b"x" * (100 + i))
    return path


def test_concurrent_ingests_are_all_committed_and_batched(tmp_path):
    store = InstanceStore(tmp_path, "router")
    n = 40
    gate = threading.Barrier(8)
    errors = []

    def worker(k):
        gate.wait()
        for i in range(k, n, 8):
            try:
                store.ingest(_tmp_file(store, i), _info(i, study=f"1.2.{i % 3}"))
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = store.db.query("SELECT * FROM instances")
    assert len(rows) == n
    for r in rows:
        assert (store.spool_dir / r["path"]).stat().st_size == r["size"]
    assert store._group.requests == n
    assert 1 <= store._group.rounds <= n
    assert not list(store.tmp_dir.iterdir())
    store.close()


def test_a_failing_hook_fails_only_its_own_instance(tmp_path):
    """The hook runs in the shared transaction, inside its own savepoint."""
    store = InstanceStore(tmp_path, "router")
    with store.db.write() as conn:
        conn.execute("CREATE TABLE queue (instance_id INTEGER)")
    results = {}
    gate = threading.Barrier(6)

    def hook_for(i):
        def hook(conn, instance_id, replaced):
            conn.execute("INSERT INTO queue VALUES (?)", (instance_id,))
            if i % 2:
                raise RuntimeError(f"hook {i} refuses")
        return hook

    def worker(i):
        gate.wait()
        try:
            store.ingest(_tmp_file(store, i), _info(i), hook_for(i))
            results[i] = "ok"
        except RuntimeError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: "ok" if i % 2 == 0 else f"hook {i} refuses" for i in range(6)}
    stored = {r["sop_instance_uid"] for r in store.db.query("SELECT * FROM instances")}
    assert stored == {f"1.2.3.4.{i}" for i in range(0, 6, 2)}
    queued = store.db.query("SELECT COUNT(*) AS n FROM queue")[0]["n"]
    assert queued == 3
    # Failed instances leave no file in the spool.
    files = [p for p in store.spool_dir.rglob("*.dcm")]
    assert len(files) == 3
    store.close()


def test_a_failed_commit_fails_every_instance_of_the_round(tmp_path):
    store = InstanceStore(tmp_path, "router")

    class Broken:
        """A database whose commit fails, as on an I/O error."""

        def __init__(self, db):
            self.db = db

        def write(self):
            from contextlib import contextmanager

            @contextmanager
            def cm():
                with self.db.write() as conn:
                    yield conn
                    raise sqlite3.OperationalError("disk I/O error")
            return cm()

    store._group = GroupCommit(Broken(store.db))
    with pytest.raises(sqlite3.OperationalError):
        store.ingest(_tmp_file(store, 1), _info(1))
    assert store.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    assert not list(store.spool_dir.rglob("*.dcm"))
    store.close()


def test_replacing_an_instance_removes_the_old_file(tmp_path):
    store = InstanceStore(tmp_path, "router")
    first = store.ingest(_tmp_file(store, 1), _info(1))
    second = store.ingest(_tmp_file(store, 2), _info(1))
    assert first.path != second.path
    assert not (store.spool_dir / first.path).exists()
    assert (store.spool_dir / second.path).exists()
    assert store.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1
    store.close()


def test_checksum_given_by_the_caller_is_kept(tmp_path):
    store = InstanceStore(tmp_path, "router")
    info = _info(1)
    info.sha256, info.size = "ab" * 32, 101
    store.ingest(_tmp_file(store, 1), info)
    row = store.get("1.2.3.4.1")
    assert (row["sha256"], row["size"]) == ("ab" * 32, 101)
    info = _info(2)
    store.ingest(_tmp_file(store, 2), info)
    import hashlib
    row = store.get("1.2.3.4.2")
    assert row["sha256"] == hashlib.sha256(b"x" * 102).hexdigest()
    assert row["size"] == 102
    assert os.path.exists(store.spool_dir / row["path"])
    store.close()
