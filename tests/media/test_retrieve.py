"""Fetching a study from a PACS for burning: the Media AE as C-MOVE SCU against Orthanc.

Orthanc is the PACS (a Query/Retrieve SCP that knows the Media AE as a DICOM
node); the media service runs with it in a private network namespace, and
the burnt disc (an xorriso ``stdio:`` pseudo-drive) is read back and
checked like every other disc.
"""

import json
import sqlite3
import subprocess
import time

import pytest
from mediabox import check_disc, cli, jobs, kill_hard, log_of, wait_for, wait_job
from pydicom import dcmread

from datagen import ct_series
from helpers import dcmtk_env, free_port, require, write_config
from peers import Orthanc


def retrieves(state):
    conn = sqlite3.connect(state / "media" / "index.db")
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM media_retrieves ORDER BY id")]
    conn.close()
    return rows


@pytest.fixture
def pacs(netns, tmp_path):
    """Orthanc as the PACS, knowing the Media AE on a port chosen here."""
    require("Orthanc", "storescu", "curl", "xorriso")
    media_port = free_port()
    orthanc = Orthanc(netns, tmp_path / "pacs", aet="PACS",
                      modalities={"box": ["DICOMBOX_CD", "127.0.0.1", media_port]})
    orthanc.media_port = media_port
    orthanc.start()
    yield orthanc
    orthanc.stop()


def load(netns, pacs, files):
    r = netns.run("storescu", "-aec", "PACS", "127.0.0.1", pacs.dicom_port, *files)
    assert r.returncode == 0, r.stdout + r.stderr


class DcmQrScp:
    """DCMTK dcmqrscp as the PACS: it serves the files indexed into its
    storage area (``dcmqridx``) and knows the Media AE as a move destination."""

    def __init__(self, netns, workdir, media_port: int, files, knows_the_box: bool = True):
        require("dcmqrscp", "dcmqridx")
        self.netns = netns
        self.dicom_port = free_port()
        self.media_port = media_port
        db = workdir / "qrdb"
        db.mkdir(parents=True)
        self.config = workdir / "dcmqrscp.cfg"
        self.config.write_text(
            f"NetworkTCPPort = {self.dicom_port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\n"
            + (f"box = (DICOMBOX_CD, 127.0.0.1, {media_port})\n" if knows_the_box else "")
            + "HostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\nPACS {db} RW (200, 1024mb) ANY\nAETable END\n")
        r = subprocess.run(["dcmqridx", str(db), *map(str, files)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        self.log = open(workdir / "dcmqrscp.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([*netns.prefix(), "dcmqrscp", "-d", "-c",
                                      str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=dcmtk_env())
        wait_for(lambda: netns.run("echoscu", "-aec", "PACS", "127.0.0.1",
                                   self.dicom_port).returncode == 0, timeout=15,
                 what="dcmqrscp to listen")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def config_for(tmp_path, pacs, **media):
    base = {"port": pacs.media_port, "grouping": "study", "idle_seconds": 1,
            "auto_burn": False, "writer": "optical", "udev": False, "probe_seconds": 0.3,
            "optical": {"device": f"stdio:{tmp_path / 'disc.iso'}"},
            "sources": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                         "port": pacs.dicom_port, "response_timeout": 30}]}
    base.update(media)
    return write_config(tmp_path, media=base)


def test_fetch_collects_the_whole_study_and_burns_it(box, netns, pacs, tmp_path):
    wanted = ct_series(tmp_path / "wanted", 6, patient=("Prior^Pat", "PRIOR1"))
    other = ct_series(tmp_path / "other", 2, patient=("Other^Pat", "OTHER1"))
    load(netns, pacs, [*wanted, *other])
    study = str(dcmread(wanted[0]).StudyInstanceUID)
    config = config_for(tmp_path, pacs)
    media = box("media", config=config, netns=netns)
    state = tmp_path / "state"

    r = cli(config, "media", "fetch", "pacs", study, "--burn", "--follow", "--timeout", "60")
    assert r.stdout.startswith("retrieve 1 queued: study"), r.stdout
    assert "retrieve 1 done: 6 received" in r.stdout, r.stdout + media.output()[-3000:]

    [job] = wait_job(state, "done", box=media)
    assert job["instances"] == 6 and job["patient_id"] == "PRIOR1"
    history = log_of(state, job["id"])
    assert "ready: closed: retrieve 1 from pacs finished" in history, history
    assert "ready: burn requested with the fetch" in history, history
    [row] = retrieves(state)
    assert row["state"] == "done" and row["completed"] == 6 and row["failed"] == 0
    assert row["jobs"] == job["id"] and row["settled"] == 1
    check_disc(tmp_path / "disc.iso", state, job["id"], tmp_path / "read")

    listed = json.loads(cli(config, "media", "fetches", "--json").stdout)
    assert [(x["id"], x["state"], x["completed"]) for x in listed] == [(1, "done", 6)]
    assert "done" in cli(config, "media", "fetches").stdout


def test_fetch_by_accession_number_and_by_patient_id(box, netns, pacs, tmp_path):
    """A query (C-FIND) finds the studies; each becomes a retrieve and a disc."""
    first = ct_series(tmp_path / "a", 3, patient=("Hist^Pat", "HIST1"))
    second = ct_series(tmp_path / "b", 2, patient=("Hist^Pat", "HIST1"))
    other = ct_series(tmp_path / "c", 2, patient=("Other^Pat", "OTHER1"))
    load(netns, pacs, [*first, *second, *other])
    accession = str(dcmread(first[0]).AccessionNumber)
    config = config_for(tmp_path, pacs)
    media = box("media", config=config, netns=netns)
    state = tmp_path / "state"

    r = cli(config, "media", "fetch", "pacs", "--accession", accession, "--burn", "--follow")
    assert f"the studies with Accession Number {accession} from pacs" in r.stdout, r.stdout
    assert f"retrieve 1 done: query (1 study with Accession Number '{accession}': " \
        "retrieve 2)" in r.stdout, r.stdout
    assert "retrieve 2 done: 3 received" in r.stdout, r.stdout
    [job] = wait_job(state, "done", box=media)
    assert job["instances"] == 3

    r = cli(config, "media", "fetch", "pacs", "--patient-id", "HIST1", "--follow")
    assert "2 studies with Patient ID 'HIST1': retrieves 4, 5" in r.stdout, r.stdout
    rows = retrieves(state)
    assert [(x["id"], x["parent"], x["state"]) for x in rows[2:]] == [
        (3, None, "done"), (4, 3, "done"), (5, 3, "done")]
    assert sorted(x["completed"] for x in rows[3:]) == [2, 3]
    assert {x["patient_id"] for x in rows[3:]} == {"HIST1"}
    closed = wait_job(state, "ready", box=media, count=2)  # auto_burn off, no --burn
    assert sorted(j["instances"] for j in closed) == [2, 3]

    r = cli(config, "media", "fetch", "pacs", "--patient-id", "HIST*", check=False)
    assert r.returncode != 0 and "no wildcard" in r.stderr, r.stderr
    r = cli(config, "media", "fetch", "pacs", "--patient-id", "NOBODY", "--follow",
            check=False)
    assert r.returncode == 1 and "has no study with Patient ID 'NOBODY'" in r.stdout, r.stdout
    r = cli(config, "media", "fetch", "pacs", "1.2.3", "--accession", "X", check=False)
    assert r.returncode != 0 and "not allowed with" in r.stderr, r.stderr


def test_fetch_problems_are_reported_and_nothing_is_burnt(box, netns, pacs, tmp_path):
    config = config_for(tmp_path, pacs, sources=[
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port},
        {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port()}])
    media = box("media", config=config, netns=netns)
    state = tmp_path / "state"

    r = cli(config, "media", "fetch", "nowhere", "1.2.3", check=False)
    assert r.returncode != 0 and "no source 'nowhere' in media.sources (pacs, down)" \
        in r.stderr, r.stdout + r.stderr

    r = cli(config, "media", "fetch", "pacs", "1.2.3; DROP", check=False)
    assert r.returncode != 0 and "'1.2.3; DROP' is not a Study Instance UID" in r.stderr, \
        r.stdout + r.stderr

    r = cli(config, "media", "fetch", "pacs", "1.2.826.0.1.3680043.8.498.4242",
            "--follow", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "retrieve 1 failed" in r.stdout and "with status C000" in r.stdout, r.stdout

    r = cli(config, "media", "fetch", "down", "1.2.3.4", "--follow", check=False)
    assert r.returncode == 1 and "cannot connect to DOWN@127.0.0.1" in r.stdout, r.stdout

    r = cli(config, "media", "fetch-cancel", "99", check=False)
    assert r.returncode == 1 and "refused: no retrieve 99" in r.stdout, r.stdout

    first, second = retrieves(state)
    assert first["state"] == "failed" and first["completed"] == 0
    assert first["message"], first
    assert second["state"] == "failed"
    assert jobs(state) == []
    assert media.proc.poll() is None


@pytest.mark.parametrize("grouping", ["study", "association"])
def test_a_partial_retrieve_fails_its_job_instead_of_burning_it(box, netns, tmp_path,
                                                                 grouping):
    """Part of the study cannot be sent to the Media AE (a private SOP class
    it does not accept): the PACS (dcmqrscp) reports the failed
    sub-operations, and the job holding the rest is failed with the counts,
    never burnt by itself (grouping by association too: the PACS's
    association ends before its final response, and the job must not close
    and burn in between)."""
    study = "1.2.826.0.1.3680043.8.498.77"
    ct = ct_series(tmp_path / "ct", 3, patient=("Part^Pat", "PART1"), study=study)
    private = ct_series(tmp_path / "priv", 2, patient=("Part^Pat", "PART1"), study=study)
    for f in private:
        ds = dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.9"
        ds.save_as(f)
    pacs = DcmQrScp(netns, tmp_path, free_port(), [*ct, *private])
    config = config_for(tmp_path, pacs, auto_burn=True, grouping=grouping)
    try:
        media = box("media", config=config, netns=netns)
        partial_retrieve(config, tmp_path, media, study)
    finally:
        pacs.stop()


def partial_retrieve(config, tmp_path, media, study):
    state = tmp_path / "state"

    r = cli(config, "media", "fetch", "pacs", study, "--burn", "--follow", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    [row] = retrieves(state)
    assert row["state"] == "failed" and row["completed"] == 3 and row["failed"] == 2, row
    assert "2 failed" in row["message"], row
    [job] = wait_job(state, "failed", box=media)
    assert job["instances"] == 3
    assert job["error"].startswith("incomplete study: PACS@127.0.0.1"), job["error"]
    assert "2 failed" in job["error"], job["error"]
    time.sleep(1.5)  # auto_burn with a blank pseudo-disc: still nothing is written
    assert jobs(state)[0]["state"] == "failed"
    assert not (tmp_path / "disc.iso").exists() or (tmp_path / "disc.iso").stat().st_size == 0


def test_an_operator_cancels_a_running_and_a_queued_retrieve(box, netns, tmp_path):
    """fetch-cancel: the running retrieve gets a C-CANCEL (dcmqrscp stops and
    answers Cancel), its job fails as incomplete; the queued one never starts."""
    study = "1.2.826.0.1.3680043.8.498.79"
    files = ct_series(tmp_path / "ct", 3000, rows=16, cols=16, study=study)
    pacs = DcmQrScp(netns, tmp_path, free_port(), files)
    config = config_for(tmp_path, pacs, auto_burn=True)
    state = tmp_path / "state"
    try:
        media = box("media", config=config, netns=netns)
        cli(config, "media", "fetch", "pacs", study)
        cli(config, "media", "fetch", "pacs", "1.2.826.0.1.3680043.8.498.80")

        def some_arrived():
            rows = retrieves(state)
            return rows[0]["state"] == "running" and rows[0]["completed"] >= 5
        wait_for(some_arrived, timeout=60, interval=0.01, what="part of the study")
        r = cli(config, "media", "fetch-cancel", "2")
        assert r.stdout.strip() == "retrieve 2 cancelled", r.stdout
        r = cli(config, "media", "fetch-cancel", "1")
        assert "retrieve 1 is being cancelled (C-CANCEL sent to the source)" in r.stdout
        wait_for(lambda: retrieves(state)[0]["settled"] == 1, timeout=60,
                 what="the cancelled retrieve to end")
    finally:
        pacs.stop()
    first, second = retrieves(state)
    assert first["state"] == "failed" and first["status"] == 0xFE00, first
    assert first["message"].startswith("cancelled by the operator: PACS@"), first
    assert 5 <= first["completed"] < 3000, first
    assert second["state"] == "failed" and second["attempts"] == 0
    assert second["message"] == "cancelled by the operator before it started"
    [job] = wait_job(state, "failed", box=media)
    assert job["instances"] == first["completed"]
    assert job["error"].startswith("incomplete study: cancelled by the operator"), job
    r = cli(config, "media", "fetch-cancel", "1", check=False)
    assert r.returncode == 1 and "refused: retrieve 1 is already failed" in r.stdout, r.stdout


def test_a_source_that_does_not_know_the_media_ae_is_explained(box, netns, tmp_path):
    study = "1.2.826.0.1.3680043.8.498.78"
    files = ct_series(tmp_path / "ct", 2, study=study)
    pacs = DcmQrScp(netns, tmp_path, free_port(), files, knows_the_box=False)
    config = config_for(tmp_path, pacs)
    try:
        box("media", config=config, netns=netns)
        r = cli(config, "media", "fetch", "pacs", study, "--follow", check=False)
    finally:
        pacs.stop()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not know the move destination 'DICOMBOX_CD': declare DICOMBOX_CD" \
        in r.stdout, r.stdout
    [row] = retrieves(tmp_path / "state")
    assert row["status"] == 0xA801 and row["jobs"] == ""


def test_a_retrieve_cut_by_kill_9_runs_again_at_restart(box, netns, pacs, tmp_path):
    files = ct_series(tmp_path / "big", 150, rows=128, cols=128, patient=("Kill^Pat", "KILL1"))
    load(netns, pacs, files)
    study = str(dcmread(files[0]).StudyInstanceUID)
    config = config_for(tmp_path, pacs)
    media = box("media", config=config, netns=netns)
    state = tmp_path / "state"
    cli(config, "media", "fetch", "pacs", study, "--burn")

    def some_arrived():
        rows = retrieves(state)
        return rows and rows[0]["state"] == "running" and rows[0]["completed"] >= 5
    wait_for(some_arrived, timeout=60, interval=0.01, what="part of the study")
    kill_hard(media)
    media = box("media", config=config, netns=netns)
    wait_for(lambda: retrieves(state)[0]["state"] == "done", timeout=120,
             what="the retrieve to run again")
    [row] = retrieves(state)
    assert row["attempts"] == 2 and row["completed"] == 150, row
    [job] = wait_job(state, "done", box=media, timeout=180)
    assert job["instances"] == 150
    assert "retrieve 1 was" not in media.output()  # no traceback, only the warning
    assert "1 retrieve(s) were running when the service stopped" in media.output()


@pytest.mark.parametrize("media, key, problem", [
    ({"sources": [{"name": "a", "ae_title": "PACS", "host": "10.0.0.1"},
                  {"name": "a", "ae_title": "PACS2", "host": "10.0.0.2"}]},
     "media.sources[1].name", "duplicate source name 'a'"),
    ({"allowed_calling_aets": ["CT1"],
      "sources": [{"name": "a", "ae_title": "PACS", "host": "10.0.0.1"}]},
     "media.sources[0].ae_title", "not in media.allowed_calling_aets"),
    ({"sources": [{"name": "a", "ae_title": "PACS"}]}, "media.sources[0].host", ""),
])
def test_bad_sources_are_named(tmp_path, media, key, problem):
    from dicombox.config import ConfigError, load
    path = write_config(tmp_path, media=media)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert key in str(err.value) and problem in str(err.value), str(err.value)


@pytest.mark.parametrize("code, counts, state, words", [
    (0x0000, {"completed": 4}, "done", "4 instance(s) retrieved"),
    (0x0000, {"completed": 0}, "failed", "has no instance of this study"),
    (0xB000, {"completed": 3, "failed": 0, "warning": 1}, "done", "1 with warnings"),
    (0xB000, {"completed": 3, "failed": 1, "warning": 0}, "failed", "1 failed"),
    (0xFE00, {"completed": 2}, "failed", "cancelled the retrieve after 2"),
    (0xA702, {}, "failed", "out of resources (status A702)"),
    (0xC001, {"completed": 1}, "failed", "status C001 after 1 instance(s)"),
])
def test_final_statuses(code, counts, state, words):
    from dicombox.media.retrieve import final_outcome
    outcome = final_outcome(code, counts, "DICOMBOX_CD", "PACS@10.0.0.5:104")
    assert outcome.state == state and words in outcome.message, outcome
