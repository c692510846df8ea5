"""Orthanc as the Storage Commitment SCU against the router in local mode.

Orthanc releases its association right after the N-ACTION, so every report
here travels on a new association from the router to Orthanc.
"""

import pytest
from commitpeers import ask, committed, failures, refs_of, requests_table, result, wait_until

from datagen import ct_series
from helpers import free_port, require
from peers import Orthanc

CT = "1.2.840.10008.5.1.4.1.1.2"
UNKNOWN = (CT, "1.2.826.0.1.3680043.8.498.1.999999")


@pytest.fixture
def modality(netns, tmp_path):
    """Orthanc as the modality, knowing the router as "box" on a port chosen here."""
    require("Orthanc", "storescu", "curl")
    router_port = free_port()
    orthanc = Orthanc(netns, tmp_path / "modality", aet="MODALITY",
                      modalities={"box": ["DICOMBOX", "127.0.0.1", router_port]})
    orthanc.router_port = router_port
    orthanc.start()
    yield orthanc
    orthanc.stop()


def sections(modality, **commitment):
    return {"router": {"port": modality.router_port}, "commitment": commitment,
            "remote_aes": [{"ae_title": "MODALITY", "host": "127.0.0.1",
                            "port": modality.dicom_port}]}


def store(netns, port, files):
    r = netns.run("storescu", "-aec", "DICOMBOX", "127.0.0.1", port, *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_orthanc_success_and_no_such_object(box, netns, modality, tmp_path):
    router = box("router", netns=netns, **sections(modality, local_timeout=1.0))
    files = ct_series(tmp_path / "ct", 3)
    store(netns, modality.router_port, files)
    refs = refs_of(files)

    report = result(modality, ask(modality, refs))
    assert report["Status"] == "Success", router.output()[-2000:]
    assert sorted(committed(report)) == sorted(refs)
    assert report["RemoteAET"] == "DICOMBOX"

    report = result(modality, ask(modality, refs[:1] + [UNKNOWN]))
    assert report["Status"] == "Failure"
    assert committed(report) == refs[:1]
    assert failures(report) == {UNKNOWN[1]: 0x0112}


def test_orthanc_report_survives_kill_9(box, netns, modality, tmp_path):
    """The request is acknowledged while its instances are still on their way;
    the router is killed; the restarted router finds them and reports."""
    router = box("router", netns=netns, **sections(modality, local_timeout=600))
    files = ct_series(tmp_path / "ct", 2)
    refs = refs_of(files)
    job = ask(modality, refs)
    state = tmp_path / "state"
    assert wait_until(lambda: requests_table(state), 30)
    assert requests_table(state)[0]["state"] == "waiting"
    router.kill()
    assert result(modality, job, timeout=0)["Status"] == "Pending"
    router = box("router", netns=netns, config=router.config)
    store(netns, modality.router_port, files)
    report = result(modality, job)
    assert report["Status"] == "Success", router.output()[-2000:]
    assert sorted(committed(report)) == sorted(refs)
