"""Storage commitment in the forwarded and upstream modes, against Orthanc.

Orthanc plays the modality (the Storage Commitment SCU asking the router)
and the PACS destinations; in upstream mode the PACS is also the Storage
Commitment SCP the router asks in turn.
"""

import json
import sqlite3
import subprocess
import threading
import time

import pytest
from commitpeers import ask, committed, failures, refs_of, requests_table, result, wait_until

from datagen import ct_series
from helpers import DICOMBOX, config_data, free_port, require, write_config
from peers import Orthanc


@pytest.fixture
def orthancs(netns, tmp_path):
    """Make Orthanc peers in the namespace (started by the test); all stopped in teardown."""
    require("Orthanc", "storescu", "curl")
    made = []

    def make(name: str, aet: str, **kw) -> Orthanc:
        o = Orthanc(netns, tmp_path / name, aet=aet, **kw)
        made.append(o)
        return o

    yield make
    # Orthanc takes a few seconds to stop: stop them side by side.
    stoppers = [threading.Thread(target=o.stop) for o in made]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()


def destination(name: str, orthanc: Orthanc) -> dict:
    return {"name": name, "ae_title": orthanc.aet, "host": "127.0.0.1",
            "port": orthanc.dicom_port}


def relay_config(router_port: int, modality: Orthanc, destinations: list[dict],
                 **commitment) -> dict:
    return config_data(
        router={"port": router_port},
        destinations=destinations,
        forwarding={"default_destinations": [d["name"] for d in destinations],
                    "retry_initial": 0.2, "retry_max": 1.0, "idle_poll": 0.5},
        commitment=commitment,
        remote_aes=[{"ae_title": modality.aet, "host": "127.0.0.1",
                     "port": modality.dicom_port}])


def store(netns, port, files):
    r = netns.run("storescu", "-aec", "DICOMBOX", "127.0.0.1", port, *files)
    assert r.returncode == 0, r.stdout + r.stderr


def queue_rows(state) -> list[dict]:
    conn = sqlite3.connect(state / "router" / "index.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM forward_queue ORDER BY id")]
    finally:
        conn.close()


def test_forwarded_waits_for_a_destination_that_is_down(box, netns, orthancs, tmp_path):
    router_port = free_port()
    modality = orthancs("modality", "MODALITY",
                        modalities={"box": ["DICOMBOX", "127.0.0.1", router_port]}).start()
    archive = orthancs("archive", "ARCHIVE").start()
    pacs = orthancs("pacs", "PACS")  # not started yet: it is down
    data = relay_config(router_port, modality,
                        [destination("archive", archive), destination("pacs", pacs)],
                        mode="forwarded", timeout=600)
    router = box("router", netns=netns, config=write_config(tmp_path, data))
    files = ct_series(tmp_path / "ct", 3)
    refs = refs_of(files)
    store(netns, router_port, files)
    assert wait_until(lambda: archive.instance_count() == 3, 60)

    job = ask(modality, refs)
    state = tmp_path / "state"
    assert wait_until(lambda: requests_table(state), 30)
    # The archive has every instance, the PACS none: nothing is committed yet.
    assert result(modality, job, timeout=0)["Status"] == "Pending"
    req = requests_table(state)[0]
    assert req["state"] == "waiting" and req["committed"] == 0

    pacs_up = time.time()
    pacs.start()
    report = result(modality, job)
    assert report["Status"] == "Success", router.output()[-3000:]
    assert sorted(committed(report)) == sorted(refs)
    assert pacs.instance_count() == 3
    assert requests_table(state)[0]["resolved_at"] >= pacs_up


def test_forwarded_timeout_reports_processing_failure(box, netns, orthancs, tmp_path):
    router_port = free_port()
    modality = orthancs("modality", "MODALITY",
                        modalities={"box": ["DICOMBOX", "127.0.0.1", router_port]}).start()
    archive = orthancs("archive", "ARCHIVE").start()
    pacs = orthancs("pacs", "PACS")  # never started
    data = relay_config(router_port, modality,
                        [destination("archive", archive), destination("pacs", pacs)],
                        mode="forwarded", timeout=2)
    box("router", netns=netns, config=write_config(tmp_path, data))
    files = ct_series(tmp_path / "ct", 2)
    refs = refs_of(files)
    store(netns, router_port, files)
    report = result(modality, ask(modality, refs))
    assert report["Status"] == "Failure"
    assert committed(report) == []
    assert failures(report) == {inst: 0x0110 for _, inst in refs}


def test_upstream_reports_only_what_the_pacs_committed(box, netns, orthancs, tmp_path):
    """The PACS loses one instance after it was delivered: the router asks the PACS
    to commit what it delivered and passes on only what the PACS committed."""
    router_port = free_port()
    modality = orthancs("modality", "MODALITY",
                        modalities={"box": ["DICOMBOX", "127.0.0.1", router_port]}).start()
    pacs = orthancs("pacs", "PACS",
                    modalities={"box": ["DICOMBOX", "127.0.0.1", router_port]}).start()
    dests = [destination("pacs", pacs)]
    # First forward only (the router does not ask the PACS yet)...
    data = relay_config(router_port, modality, dests, mode="forwarded")
    router = box("router", netns=netns, config=write_config(tmp_path, data))
    files = ct_series(tmp_path / "ct", 3)
    refs = refs_of(files)
    store(netns, router_port, files)
    state = tmp_path / "state"
    assert wait_until(lambda: [r["state"] for r in queue_rows(state)] == ["delivered"] * 3,
                      60), router.output()[-3000:]
    lost = refs[1][1]
    found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": lost}})
    pacs.rest("DELETE", f"/instances/{found[0]}")
    assert pacs.instance_count() == 2
    router.stop()

    # ...then upstream: the restarted router asks the PACS, which commits two.
    data = relay_config(router_port, modality, dests, mode="upstream", timeout=120,
                        upstream=[{"destination": "pacs"}])
    router = box("router", netns=netns, config=write_config(tmp_path, data))
    report = result(modality, ask(modality, refs))
    assert report["Status"] == "Failure", router.output()[-3000:]
    assert sorted(committed(report)) == sorted(r for r in refs if r[1] != lost)
    assert failures(report) == {lost: 0x0110}
    rows = {r["sop_instance_uid"]: r for r in queue_rows(state)}
    assert {u for u, r in rows.items() if r["committed_at"]} == {
        inst for _, inst in refs if inst != lost}

    out = subprocess.run([*DICOMBOX, "--config", str(router.config), "commit", "list",
                          "--upstream", "--json"], capture_output=True, text=True)
    upstream = json.loads(out.stdout)
    assert [(u["destination"], u["state"], u["committed"], u["failed"])
            for u in upstream] == [("pacs", "answered", 2, 1)]
