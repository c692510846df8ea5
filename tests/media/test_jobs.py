"""Media jobs: the state machine as data, grouping, closing, volumes, commands, release."""

import dataclasses
import shutil
import sqlite3

import pytest
from pydicom import dcmread

from dicombox.media import jobs as J
from dicombox.media.jobs import Group, JobStore
from dicombox.store import InstanceInfo, InstanceStore
from dicombox.store.instances import read_header

from datagen import ct_series, tiny_instances


@pytest.fixture
def store(tmp_path):
    s = InstanceStore(tmp_path / "state", "media", migrations=J.MIGRATIONS)
    yield s
    s.close()


@pytest.fixture
def jobs(store):
    return JobStore(store.db, store.root)


def ingest(store, jobs, src, grouping="study", association="", now=None):
    """Store ``src`` as the Storage SCP does and put it into its job."""
    values = read_header(src)
    tmp = store.tmp_dir / src.name
    shutil.copyfile(src, tmp)
    info = InstanceInfo(**values)
    out = {}

    def hook(conn, instance_id, replaced):
        out["job"] = jobs.add_instance(conn, instance_id, info,
                                       Group.of(grouping, info, association), now=now)

    store.ingest(tmp, info, hook)
    return out["job"]


def test_states_and_transitions_are_data():
    assert J.STATES == ("collecting", "ready", "building", "writing", "verifying", "done",
                        "failed", "cancelled")
    for (state, _event), target in J.TRANSITIONS.items():
        assert state in J.STATES and target in J.STATES
    # Every state is reachable from collecting, and every non-final state can be cancelled.
    reached, frontier = {"collecting"}, ["collecting"]
    while frontier:
        s = frontier.pop()
        for (src, _e), dst in J.TRANSITIONS.items():
            if src == s and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(J.STATES)
    for s in ("collecting", "ready", "building", "writing", "verifying", "failed"):
        assert J.next_state(s, "cancel") == "cancelled"
    with pytest.raises(J.InvalidTransition, match="job X is done: cannot cancel it"):
        J.next_state("done", "cancel", "X")
    with pytest.raises(J.InvalidTransition):
        J.next_state("collecting", "start")


def test_grouping_by_study_patient_and_association(tmp_path, store, jobs):
    a = ct_series(tmp_path / "a", 2, patient=("Doe^John", "P1"))
    b = ct_series(tmp_path / "b", 2, patient=("Doe^John", "P1"))
    c = tiny_instances(tmp_path / "c", 1)
    by_study = {ingest(store, jobs, f) for f in a + b}
    assert len(by_study) == 2
    rows = jobs.jobs()
    assert [r["instances"] for r in rows] == [2, 2]
    assert all(r["state"] == "collecting" and r["patient_id"] == "P1" for r in rows)
    assert rows[0]["bytes"] == sum(f.stat().st_size for f in a)

    s2 = InstanceStore(tmp_path / "s2", "media", migrations=J.MIGRATIONS)
    j2 = JobStore(s2.db, s2.root)
    assert len({ingest(s2, j2, f, "patient") for f in a + b}) == 1
    assert ingest(s2, j2, c[0], "patient") not in {r["id"] for r in j2.jobs()[:1]}
    s2.close()

    s3 = InstanceStore(tmp_path / "s3", "media", migrations=J.MIGRATIONS)
    j3 = JobStore(s3.db, s3.root)
    first = {ingest(s3, j3, f, "association", "A1") for f in a + c}
    second = {ingest(s3, j3, f, "association", "A2") for f in b}
    assert len(first) == 1 and len(second) == 1 and first != second
    assert j3.close_group("association:A1", "released") == list(first)
    assert j3.job(first.pop())["state"] == "ready"
    s3.close()


def test_idle_close_and_a_closed_job_takes_nothing_more(tmp_path, store, jobs):
    files = ct_series(tmp_path / "a", 3)
    first = ingest(store, jobs, files[0], now=1000.0)
    assert jobs.close_idle(60, now=1030.0) == []
    assert ingest(store, jobs, files[1], now=1050.0) == first
    assert jobs.close_idle(60, now=1100.0) == []
    assert jobs.close_idle(60, now=1111.0) == [first]
    job = jobs.job(first)
    assert job["state"] == "ready" and job["closed_at"] == 1111.0
    # More of the same study after the close starts a new job.
    second = ingest(store, jobs, files[2])
    assert second != first
    assert jobs.job(first)["instances"] == 2
    assert [e["message"] for e in jobs.log(first)] == [
        "collecting (study)", "closed: nothing received for 60 s"]
    # The panel's contract: these columns exist and progress is 0..1.
    conn = sqlite3.connect(store.root / "index.db")
    cols = {r[1] for r in conn.execute("PRAGMA table_info(media_jobs)")}
    assert {"id", "state", "created_at", "updated_at", "error", "progress"} <= cols
    cols = [r[1] for r in conn.execute("PRAGMA table_info(media_commands)")]
    assert cols == ["id", "command", "job_id", "created_at", "handled_at", "result"]


def test_transitions_are_checked_and_logged(tmp_path, store, jobs):
    job = ingest(store, jobs, ct_series(tmp_path / "a", 1)[0])
    with pytest.raises(J.InvalidTransition):
        jobs.transition(job, "start")
    with pytest.raises(J.UnknownJob):
        jobs.transition("nope", "close")
    assert jobs.transition(job, "close", "burn requested") == "ready"
    assert jobs.transition(job, "start", error=None) == "building"
    assert jobs.transition(job, "fail", "boom", error="boom") == "failed"
    assert jobs.job(job)["error"] == "boom"
    assert jobs.transition(job, "retry") == "ready"
    assert [e["state"] for e in jobs.log(job)] == [
        "collecting", "ready", "building", "failed", "ready"]


def test_volumes_plan_and_files(tmp_path, store, jobs):
    files = ct_series(tmp_path / "a", 4)
    job = [ingest(store, jobs, f) for f in files][0]
    ids = [r["instance_id"] for r in jobs.instances(job)]
    jobs.plan(job, [ids[:3], ids[3:]], profile="STD-GEN-CD", writer="optical")
    j = jobs.job(job)
    assert (j["volume"], j["volumes"], j["profile"]) == (1, 2, "STD-GEN-CD")
    assert [v["instances"] for v in jobs.volumes(job)] == [3, 1]
    assert len(jobs.instances(job, volume=2)) == 1
    jobs.set_volume(job, 1, "built", files=[("DICOMDIR", "ab", 10), ("DICOM/I1", "cd", 5)])
    assert jobs.files(job, 1) == [("DICOM/I1", "cd", 5), ("DICOMDIR", "ab", 10)]
    with pytest.raises(ValueError):
        jobs.set_volume(job, 1, "burnt")
    jobs.reset_volumes(job)
    assert jobs.volumes(job) == [] and jobs.files(job, 1) == []


def test_resent_instance_keeps_the_copy_a_closed_job_needs(tmp_path, store, jobs):
    files = ct_series(tmp_path / "a", 2)
    first = [ingest(store, jobs, f) for f in files][0]
    jobs.close(first, "test")
    before = {r["sop_instance_uid"]: (store.root / r["path"]).read_bytes()
              for r in jobs.instances(first)}
    second = ingest(store, jobs, files[0])  # the same SOP instance again: replaces the file
    assert second != first
    rows = {r["sop_instance_uid"]: r for r in jobs.instances(first)}
    for uid, data in before.items():
        path = store.root / rows[uid]["path"]
        assert path.read_bytes() == data, "a closed job lost the file it holds"
    kept = [r for r in rows.values() if r["path"].startswith(f"jobs/{first}/keep/")]
    assert len(kept) == 1
    new_row = jobs.instances(second)[0]
    assert new_row["path"].startswith("spool/") and (store.root / new_row["path"]).exists()


def test_release_removes_only_what_no_other_job_holds(tmp_path, store, jobs):
    files = ct_series(tmp_path / "a", 3)
    first = [ingest(store, jobs, f) for f in files][0]
    jobs.close(first, "test")
    second = ingest(store, jobs, files[0])  # shared instance
    for path in jobs.release(first, delete_job=True):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    with pytest.raises(J.UnknownJob):
        jobs.job(first)
    remaining = store.db.query("SELECT sop_instance_uid, path FROM instances")
    assert len(remaining) == 1
    assert (store.spool_dir / remaining[0]["path"]).exists()
    assert jobs.instances(second)[0]["sop_instance_uid"] == remaining[0]["sop_instance_uid"]
    assert sorted(p.name for p in store.spool_dir.rglob("*.dcm")) == [
        p for p in [remaining[0]["path"].split("/")[1]]]
    assert not (store.root / "jobs" / first).exists()


def test_finished_jobs_expire_and_keep_their_row(tmp_path, store, jobs):
    job = ingest(store, jobs, ct_series(tmp_path / "a", 1)[0])
    jobs.transition(job, "close")
    jobs.transition(job, "cancel", finished_at=1000.0)
    assert jobs.expired(3600, now=2000.0) == []
    assert jobs.expired(3600, now=5000.0) == [job]
    jobs.release(job, delete_job=False)
    assert jobs.job(job)["purged_at"] is not None
    assert jobs.expired(3600, now=5000.0) == []


def test_commands(store, jobs):
    a = jobs.add_command("burn")
    b = jobs.add_command("cancel", "260101-0001")
    with pytest.raises(ValueError):
        jobs.add_command("format")
    assert [c["id"] for c in jobs.pending_commands()] == [a, b]
    jobs.finish_command(a, "ok")
    jobs.finish_command(a, "again")  # handled once
    assert [c["id"] for c in jobs.pending_commands()] == [b]
    row = store.db.query_one("SELECT result FROM media_commands WHERE id = ?", (a,))
    assert row["result"] == "ok"


def test_ids_file_set_and_volume_ids(tmp_path, store, jobs):
    files = ct_series(tmp_path / "a", 1) + ct_series(tmp_path / "b", 1)
    ids = [ingest(store, jobs, f) for f in files]
    assert ids[0] != ids[1] and ids[0][:6] == ids[1][:6]
    assert int(ids[1][-4:]) == int(ids[0][-4:]) + 1
    fsid = J.fileset_id(ids[0])
    assert len(fsid) <= 16 and fsid.replace("_", "").isalnum() and fsid.upper() == fsid
    vid = J.volume_id(ids[0], 2, 3)
    assert vid.endswith("_2OF3") and len(vid) <= 32


def test_job_sources_read_a_volume_from_the_index_in_one_order(tmp_path, store, jobs):
    from dicombox.media.errors import MediaError
    from dicombox.media.fileset import SourceInstance
    from dicombox.media.runner import JobSources

    files = ct_series(tmp_path / "a", 5)
    job = [ingest(store, jobs, f) for f in files][0]
    ids = [r["instance_id"] for r in jobs.instances(job)]
    jobs.plan(job, [ids[:3], ids[3:]], profile="STD-GEN-CD", writer="optical")

    def make(row, shared):
        return SourceInstance(path=store.root / row["path"],
                              sop_instance_uid=row["sop_instance_uid"],
                              sop_class_uid=row["sop_class_uid"],
                              study_instance_uid=row["study_instance_uid"],
                              series_instance_uid=row["series_instance_uid"],
                              patient_id=row["patient_id"],
                              transfer_syntax_uid=row["transfer_syntax_uid"],
                              size=row["size"], sha256=row["sha256"])

    first = JobSources(jobs, job, 1, make)
    assert len(first) == 3 and len(JobSources(jobs, job, 2, make)) == 2
    listed = list(first)
    assert [first[i] for i in range(len(first))] == listed == first[:]
    assert first[-1] == listed[-1]
    assert {s.sop_instance_uid for s in listed} == \
        {r["sop_instance_uid"] for r in jobs.instances(job, volume=1)}
    assert all(s.path.is_file() for s in listed)
    # The builder asks for each instance again before it copies its file.
    keyed = dataclasses.replace(listed[0], key=ids[0])
    with store.db.write() as conn:
        conn.execute("UPDATE media_job_instances SET path = 'jobs/x/keep/a.dcm' "
                     "WHERE instance_id = ?", (ids[0],))
    assert first.current(keyed).path == store.root / "jobs/x/keep/a.dcm"
    with store.db.write() as conn:
        conn.execute("DELETE FROM media_job_instances WHERE instance_id = ?", (ids[0],))
    with pytest.raises(MediaError, match="left job"):
        [first[i] for i in range(len(first))]


def test_job_counts_follow_new_and_resent_instances(tmp_path, store, jobs):
    files = ct_series(tmp_path / "a", 3)
    job = [ingest(store, jobs, f) for f in files][0]
    sizes = {r["instance_id"]: r["size"] for r in jobs.instances(job)}
    j = jobs.job(job)
    assert (j["instances"], j["bytes"]) == (3, sum(sizes.values()))
    # The same instance again, a little longer: still three, the bytes follow.
    from pydicom import dcmread
    ds = dcmread(files[0])
    ds.ImageComments = "resent with a comment that makes it longer"
    longer = tmp_path / "longer.dcm"
    ds.save_as(longer)
    assert ingest(store, jobs, longer) == job
    rows = jobs.instances(job)
    j = jobs.job(job)
    assert (j["instances"], j["bytes"]) == (3, sum(r["size"] for r in rows))
    assert j["bytes"] > sum(sizes.values())


def _source(store, row):
    from dicombox.media.fileset import SourceInstance
    return SourceInstance(path=store.root / row["path"], sop_instance_uid=row["sop_instance_uid"],
                          sop_class_uid=row["sop_class_uid"],
                          study_instance_uid=row["study_instance_uid"],
                          series_instance_uid=row["series_instance_uid"],
                          patient_id=row["patient_id"],
                          transfer_syntax_uid=row["transfer_syntax_uid"], size=row["size"],
                          sha256=row["sha256"], key=row["instance_id"])


@pytest.fixture
def mixed_job(tmp_path, store, jobs):
    """One job (by association) of two patients, three studies, four series."""
    a = tmp_path / "a"
    study = ct_series(a / "1", 3, patient=("Doe^John", "P1"))
    study_uid = str(dcmread(study[0]).StudyInstanceUID)
    files = (study + ct_series(a / "2", 4, patient=("Doe^John", "P1"), study=study_uid)
             + ct_series(a / "3", 5, patient=("Roe^Jane", "P2"))
             + ct_series(a / "4", 2, patient=("Doe^John", "P1")))
    job = {ingest(store, jobs, f, grouping="association", association="x") for f in files}
    assert len(job) == 1
    return job.pop()


def test_instances_are_read_in_batches_in_one_order(monkeypatch, store, jobs, mixed_job):
    ordered = [r["instance_id"] for r in store.db.query(
        "SELECT instance_id FROM media_job_instances WHERE job_id = ? "
        "ORDER BY study_instance_uid, series_instance_uid, instance_id", (mixed_job,))]
    monkeypatch.setattr(J, "BATCH", 2)
    assert [r["instance_id"] for r in jobs.iter_instances(mixed_job)] == ordered
    assert jobs.instance_ids(mixed_job) == ordered
    assert jobs.count_instances(mixed_job) == 14
    jobs.plan(mixed_job, [ordered[:5], ordered[5:]])
    assert [r["instance_id"] for r in jobs.iter_instances(mixed_job, 2)] == ordered[5:]
    assert jobs.count_instances(mixed_job, 2) == 9
    first = jobs.instance(mixed_job, ordered[0])
    series = [r["instance_id"] for r in jobs.iter_series(
        mixed_job, first["patient_id"], first["study_instance_uid"],
        first["series_instance_uid"])]
    assert series and series == [i for i in ordered if jobs.instance(mixed_job, i)[
        "series_instance_uid"] == first["series_instance_uid"]]


def test_plans_of_runs_are_the_plans_of_instances(monkeypatch, store, jobs, mixed_job):
    from dicombox.media.span import plan_runs, plan_volumes

    monkeypatch.setattr(J, "BATCH", 3)
    sources = [_source(store, r) for r in jobs.iter_instances(mixed_job)]
    for capacity in (10 ** 7, 90_000, 60_000, 40_000):
        expected = plan_volumes(sources, capacity, 1000)
        runs = plan_runs((_source(store, r) for r in jobs.iter_instances(mixed_job)), capacity,
                         1000, series_of=lambda p, s, e: (
                             _source(store, r) for r in jobs.iter_series(mixed_job, p, s, e)),
                         key=lambda source, _position: source.key)
        assert len(runs) == len(expected), capacity
        assert jobs.plan(mixed_job, runs, profile="STD-GEN-CD") == 14
        for n, volume in enumerate(expected, 1):
            assert {r["sop_instance_uid"] for r in jobs.iter_instances(mixed_job, n)} == \
                {s.sop_instance_uid for s in volume}, (capacity, n)
            assert jobs.volume(mixed_job, n)["instances"] == len(volume)
        if capacity == 40_000:
            assert any(run.first is not None for volume in runs for run in volume)
    assert jobs.plan(mixed_job, [[(None, None)]]) == 14
    assert jobs.count_instances(mixed_job, 1) == 14


def test_the_manifest_is_written_as_it_comes_and_read_in_batches(monkeypatch, store, jobs,
                                                                  mixed_job):
    monkeypatch.setattr(J, "BATCH", 4)
    jobs.plan(mixed_job, [jobs.instance_ids(mixed_job)])
    jobs.set_volume(mixed_job, 1, "planned", files=[("OLD", "00", 1)])
    lines = [(f"PT000000/IM{i:06d}", f"{i:064x}", i) for i in range(10, 0, -1)]
    with jobs.manifest_writer(mixed_job, 1) as writer:
        assert jobs.files(mixed_job, 1) == []           # the earlier list is gone
        for line in lines:
            writer.add(*line)
        assert len(jobs.manifest(mixed_job, 1)) == 8    # two batches committed
    manifest = jobs.manifest(mixed_job, 1)
    assert len(manifest) == 10
    assert list(manifest) == list(manifest) == sorted(lines)
    assert jobs.files(mixed_job, 1) == sorted(lines)
    jobs.reset_volumes(mixed_job)
    assert list(jobs.manifest(mixed_job, 1)) == []


def test_release_lists_the_files_to_remove_outside_memory(monkeypatch, tmp_path, store, jobs,
                                                          mixed_job):
    def scratch_files():
        return [p.name for p in (store.root / "tmp").iterdir() if p.name.startswith(".release")]

    monkeypatch.setattr(J, "BATCH", 4)
    paths = {store.root / "spool" / r["path"] for r in store.db.query("SELECT path FROM instances")}
    released = jobs.release(mixed_job, delete_job=False)
    assert len(scratch_files()) == 1                 # the list waits in the store's tmp/
    assert jobs.count_instances(mixed_job) == 0
    assert store.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    listed = list(released)
    assert listed[-1] == store.root / "jobs" / mixed_job
    assert set(listed[:-1]) == paths and len(listed) == 15
    assert scratch_files() == [] and list(released) == []
    # Nothing to remove, and dropped without being walked: no file left either.
    jobs.release(mixed_job, delete_job=True)
    assert scratch_files() == []
    with pytest.raises(J.UnknownJob):
        jobs.release(mixed_job, delete_job=True)
    assert scratch_files() == []
