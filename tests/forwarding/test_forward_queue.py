"""The queue's state machine and the spool cleanup, on a real spool and index."""

import shutil
import time
from dataclasses import replace

import pytest
from pydicom import dcmread

from dicombox.config.forwarding import CleanupSection
from dicombox.router import queue as q
from dicombox.router.cleanup import clean
from dicombox.store import InstanceInfo, InstanceStore, read_header

from datagen import ct_series


@pytest.fixture
def store(tmp_path):
    s = InstanceStore(tmp_path / "state", "router", migrations=q.MIGRATIONS)
    yield s
    s.close()


def ingest(store, path, routes, tmp_path):
    """Receive ``path`` as the SCP does, routing it to ``routes`` in the transaction."""
    tmp = store.tmp_dir / f"in-{time.monotonic_ns()}.dcm"
    shutil.copy(path, tmp)
    values = read_header(tmp)
    info = InstanceInfo(**values)
    out = {}

    def hook(conn, instance_id, replaced):
        out["id"] = instance_id
        out["queued"] = q.enqueue(conn, instance_id, info.sop_instance_uid, info.sha256,
                                  routes, replaced, time.time())
    store.ingest(tmp, info, hook)
    return out["id"], out["queued"]


def rows(store):
    return {r["destination"]: dict(r) for r in store.db.query(
        "SELECT * FROM forward_queue ORDER BY id")}


def claim(store, dest):
    with store.db.write() as conn:
        items = q.candidates(conn, dest, time.time() + 1, 100)
        q.mark_claimed(conn, items)
    return items


def finish(store, items, event, **kw):
    with store.db.write() as conn:
        return q.record(conn, [q.Outcome(it, event, **kw) for it in items], time.time())


def test_transition_table_is_consistent():
    for event, (sources, target) in q.TRANSITIONS.items():
        assert set(sources) <= set(q.STATES) and target in q.STATES, event
    assert q.TRANSITIONS["recover"] == ((q.SENDING,), q.PENDING)


def test_replacement_requeues_but_a_resend_of_the_same_content_does_not(store, tmp_path):
    f = ct_series(tmp_path / "ct", 1)[0]
    iid, queued = ingest(store, f, {"pacs": "ct", "archive": "all"}, tmp_path)
    assert sorted(queued) == ["archive", "pacs"]
    for dest in ("pacs", "archive"):
        assert finish(store, claim(store, dest), "deliver",
                      sent_sop_instance_uid="x") == 1
    assert {r["state"] for r in rows(store).values()} == {"delivered"}

    _, queued = ingest(store, f, {"pacs": "ct", "archive": "all", "new": "all"}, tmp_path)
    assert queued == ["new"], "identical content: only the new route is queued"
    states = {d: r["state"] for d, r in rows(store).items()}
    assert states == {"pacs": "delivered", "archive": "delivered", "new": "pending"}

    ds = dcmread(f)
    ds.PatientName = "Changed^Name"
    ds.save_as(tmp_path / "changed.dcm")
    iid2, queued = ingest(store, tmp_path / "changed.dcm", {"pacs": "ct"}, tmp_path)
    assert iid2 == iid and queued == ["pacs"]
    r = rows(store)
    assert list(r) == ["pacs"], "rows the rules no longer route are dropped"
    assert (r["pacs"]["state"], r["pacs"]["attempts"], r["pacs"]["delivered_at"],
            r["pacs"]["sent_sop_instance_uid"]) == ("pending", 0, None, "")


def test_a_stale_result_never_lands_on_a_requeued_row(store, tmp_path):
    f = ct_series(tmp_path / "ct", 1)[0]
    ingest(store, f, {"pacs": "r"}, tmp_path)
    items = claim(store, "pacs")
    ds = dcmread(f)
    ds.StudyDescription = "new content"
    ds.save_as(tmp_path / "v2.dcm")
    time.sleep(0.01)   # created_at is the claim token: a new value for the new content
    ingest(store, tmp_path / "v2.dcm", {"pacs": "r"}, tmp_path)
    assert finish(store, items, "deliver") == 0
    assert rows(store)["pacs"]["state"] == "pending"


def test_recover_orphan_expire_and_operator_retry(store, tmp_path):
    files = ct_series(tmp_path / "ct", 3)
    for f in files:
        ingest(store, f, {"pacs": "r", "gone": "r"}, tmp_path)
    claim(store, "pacs")
    with store.db.write() as conn:
        assert q.recover(conn) == 3
        assert q.orphan(conn, ["pacs"], time.time()) == 3
    states = [(r["destination"], r["state"]) for r in store.db.query(
        "SELECT * FROM forward_queue ORDER BY destination, id")]
    assert states == [("gone", "dead")] * 3 + [("pacs", "pending")] * 3
    assert "no longer configured" in store.db.query(
        "SELECT last_error FROM forward_queue WHERE destination = 'gone'")[0][0]

    items = claim(store, "pacs")
    later = time.time() + 3600
    finish(store, items[:2], "fail", error="A700 out of resources", next_attempt_at=later)
    finish(store, items[2:], "reject", error="0122 SOP class not supported")
    assert q.candidates(store.db.read_conn(), "pacs", time.time(), 10) == []
    with store.db.write() as conn:
        assert q.expire(conn, 3600, time.time() + 7200) == 2
    row = store.db.query_one("SELECT * FROM forward_queue WHERE id = ?", (items[0].id,))
    assert row["state"] == "dead"
    assert row["last_error"] == "not delivered within 1 h; last error: A700 out of resources"

    with store.db.write() as conn:
        assert q.requeue(conn, dead=False, destination="pacs", now=time.time()) == 0
        assert q.requeue(conn, dead=True, destination="pacs", now=time.time()) == 3
    assert len(q.candidates(store.db.read_conn(), "pacs", time.time(), 10)) == 3
    summary = q.summary(store.db.read_conn(), time.time())
    assert (summary["pacs"]["pending"], summary["gone"]["dead"]) == (3, 3)


def test_which_destinations_must_commit(tmp_path):
    from dicombox import config
    from dicombox.router.cleanup import requires_commitment

    from helpers import write_config
    dests = [{"name": n, "ae_title": n.upper(), "host": "127.0.0.1"} for n in ("a", "b")]
    local = config.load(write_config(tmp_path, destinations=dests,
                                     commitment={"upstream": [{"destination": "a"}]}))
    assert requires_commitment(local) == ()
    up = config.load(write_config(tmp_path, destinations=dests,
                                  commitment={"mode": "upstream",
                                              "upstream": [{"destination": "a"}]}))
    assert requires_commitment(up) == ("a",)
    per_ae = config.load(write_config(
        tmp_path, destinations=dests, commitment={"upstream": [{"destination": "b"}]},
        remote_aes=[{"ae_title": "CT1", "host": "10.0.0.1", "mode": "upstream"}]))
    assert requires_commitment(per_ae) == ("b",)


def _cleanup(**kw):
    return replace(CleanupSection(), **kw)


def test_cleanup_waits_for_every_destination(store, tmp_path):
    files = ct_series(tmp_path / "ct", 4)
    ingest(store, files[0], {"a": "r", "b": "r"}, tmp_path)
    ingest(store, files[1], {"a": "r"}, tmp_path)
    ingest(store, files[2], {}, tmp_path)            # routed nowhere
    ingest(store, files[3], {"a": "r"}, tmp_path)
    a = claim(store, "a")
    finish(store, a, "deliver")
    paths = {r["sop_instance_uid"]: store.path_of(r["path"]) for r in store.db.query(
        "SELECT * FROM instances")}
    later = time.time() + 7200
    result = clean(store, _cleanup(max_age_hours=1), now=later)
    assert result["by_age"] == 2
    left = {r[0] for r in store.db.query("SELECT sop_instance_uid FROM instances")}
    uid = [dcmread(f).SOPInstanceUID for f in files]
    assert left == {uid[0], uid[2]}, "b has not delivered the first; the third is unrouted"
    assert not paths[uid[1]].exists() and not paths[uid[3]].exists()
    assert paths[uid[0]].exists() and paths[uid[2]].exists()
    assert store.db.query("SELECT COUNT(*) FROM forward_queue WHERE instance_id NOT IN "
                          "(SELECT id FROM instances)")[0][0] == 0

    clean(store, _cleanup(max_age_hours=1, delete_unrouted=True), now=later)
    assert {r[0] for r in store.db.query("SELECT sop_instance_uid FROM instances")} == {uid[0]}
    assert clean(store, _cleanup(max_age_hours=1), now=time.time())["by_age"] == 0


def test_upstream_commitment_keeps_instances_until_committed(store, tmp_path):
    """Only destinations asked to commit must have committed; others count once delivered."""
    files = ct_series(tmp_path / "ct", 2)
    for f in files:
        ingest(store, f, {"a": "r", "no-commitment": "r"}, tmp_path)
    finish(store, claim(store, "a"), "deliver")
    finish(store, claim(store, "no-commitment"), "deliver")
    with store.db.write() as conn:
        conn.execute("UPDATE forward_queue SET committed_at = ? WHERE sop_instance_uid = ? "
                     "AND destination = 'a'", (time.time(), dcmread(files[0]).SOPInstanceUID))
    later = time.time() + 7200
    assert clean(store, _cleanup(max_age_hours=1), require_commit=("a",),
                 now=later)["by_age"] == 1
    assert [r[0] for r in store.db.query("SELECT sop_instance_uid FROM instances")] == [
        dcmread(files[1]).SOPInstanceUID]


def test_red_zone_removes_oldest_delivered_until_green(store, tmp_path):
    """A red zone larger than the disk: everything forwarded goes, nothing else."""
    files = ct_series(tmp_path / "ct", 5)
    for f in files:
        ingest(store, f, {"a": "r"}, tmp_path)
    items = claim(store, "a")
    finish(store, items[:3], "deliver")
    finish(store, items[3:], "fail", error="x", next_attempt_at=time.time() + 60)
    huge = 1 << 40
    result = clean(store, _cleanup(red_zone_mb=huge, green_zone_mb=huge))
    assert (result["by_space"], result["by_age"]) == (3, 0)
    assert store.db.query("SELECT COUNT(*) FROM instances")[0][0] == 2
    assert len(list(store.spool_dir.rglob("*.dcm"))) == 2
