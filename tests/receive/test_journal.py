"""Small instances committed with their bytes (store/journal.py): answered
after one sync, made durable in the background, and rewritten from the index
if the files did not survive (a power cut loses the page cache; here the
files are destroyed by hand while the background flush is held back)."""

import hashlib
import threading

import pytest

from dicombox.store import InstanceInfo, InstanceStore, journal

from datagen import tiny_instances
from helpers import BoxProcess, dcmtk, write_config


def _info(i: int, uid: str | None = None) -> InstanceInfo:
    return InstanceInfo(sop_instance_uid=uid or f"1.2.3.4.{i}",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                        study_instance_uid="1.2.3", series_instance_uid="1.2.3.5",
                        transfer_syntax_uid="1.2.840.10008.1.2.1")


def _ingest(store: InstanceStore, i: int, data: bytes, uid: str | None = None,
            journaled: bool = True) -> InstanceInfo:
    tmp = store.tmp_dir / f"in-{i}.dcm"
    tmp.write_bytes(data)
    info = _info(i, uid)
    info.sha256, info.size = hashlib.sha256(data).hexdigest(), len(data)
    return store.ingest(tmp, info, data=data if journaled else None)


def _pending(store: InstanceStore) -> set[str]:
    return {r["path"] for r in store.db.query("SELECT path FROM pending_files")}


@pytest.fixture
def held(monkeypatch):
    """Hold the background flush until the test lets it go."""
    gate = threading.Event()
    real = journal.sync_filesystem

    def sync(path):
        gate.wait(30)
        real(path)

    monkeypatch.setattr(journal, "sync_filesystem", sync)
    yield gate
    gate.set()


def test_small_instance_is_pending_until_its_file_is_durable(tmp_path, held):
    store = InstanceStore(tmp_path, "router")
    info = _ingest(store, 1, b"small" * 100)
    assert (store.spool_dir / info.path).read_bytes() == b"small" * 100
    assert _pending(store) == {info.path}
    held.set()
    assert store.flush_journal(10)
    assert _pending(store) == set()
    store.close()


def test_large_instances_are_not_journaled(tmp_path):
    store = InstanceStore(tmp_path, "router")
    info = _ingest(store, 1, b"x" * (journal.JOURNAL_MAX_BYTES + 1))
    info2 = _ingest(store, 2, b"y" * 10, journaled=False)
    assert _pending(store) == set()
    assert store._flusher is None
    assert (store.spool_dir / info.path).stat().st_size == journal.JOURNAL_MAX_BYTES + 1
    assert (store.spool_dir / info2.path).read_bytes() == b"y" * 10
    store.close()


def test_files_lost_before_the_flush_are_rewritten_at_start(tmp_path, held):
    store = InstanceStore(tmp_path, "router")
    infos = [_ingest(store, i, bytes([i]) * (200 + i)) for i in range(20)]
    replaced = _ingest(store, 99, b"first copy", uid=infos[0].sop_instance_uid)
    assert len(_pending(store)) == 20  # the replaced copy's row went with it
    # As after a power cut: the files' contents never reached the disk.
    for info in [*infos, replaced]:
        (store.spool_dir / info.path).write_bytes(b"")
    (store.spool_dir / infos[5].path).unlink()
    store.db.close()  # the process dies: no flush, no clean-shutdown marker
    store._flusher = None

    again = InstanceStore(tmp_path, "router")
    result = again.recover()
    assert result["restored"] == 20 and not result["clean"]
    rows = {r["sop_instance_uid"]: r for r in again.db.query("SELECT * FROM instances")}
    assert len(rows) == 20
    for r in rows.values():
        data = (again.spool_dir / r["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
    assert (again.spool_dir / rows[infos[0].sop_instance_uid]["path"]).read_bytes() \
        == b"first copy"
    assert _pending(again) == set()
    assert not (again.spool_dir / infos[0].path).exists()
    again.close()


def test_clean_stop_flushes_everything(tmp_path):
    store = InstanceStore(tmp_path, "router")
    for i in range(50):
        _ingest(store, i, b"z" * 300)
    store.close(clean=True)
    again = InstanceStore(tmp_path, "router")
    assert _pending(again) == set()
    assert again.recover()["restored"] == 0
    again.close()


def test_router_journals_small_instances_and_flushes_them(tmp_path):
    """Through the real receive path: storescu's tiny instances end up
    durable files with no pending rows left, whatever the timing."""
    files = tiny_instances(tmp_path / "tiny", 30)
    cfg = write_config(tmp_path / "box")
    router = BoxProcess("router", cfg).start()
    port = int(cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0])
    try:
        r = dcmtk("storescu", "-aet", "MODALITY", "-aec", "DICOMBOX", "127.0.0.1", str(port),
                  *map(str, files))
        assert r.returncode == 0, r.stderr
    finally:
        assert router.stop() == 0
    store = InstanceStore(tmp_path / "box" / "state", "router")
    rows = store.db.query("SELECT * FROM instances")
    assert len(rows) == 30 and _pending(store) == set()
    for row in rows:
        data = (store.spool_dir / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    store.close()
