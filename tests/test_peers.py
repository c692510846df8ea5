"""The test peers themselves work (so a failure elsewhere is about the box)."""

from datagen import ct_series
from helpers import require
from peers import Orthanc, StoreSCP


def test_orthanc_and_storescp_in_a_namespace(netns, tmp_path):
    require("Orthanc", "storescp", "storescu", "curl")
    orthanc = Orthanc(netns, tmp_path / "orthanc").start()
    scp = StoreSCP(netns, tmp_path / "scp").start()
    try:
        files = ct_series(tmp_path / "ct", 2)
        r = netns.run("storescu", "-aec", "ORTHANC", "127.0.0.1", orthanc.dicom_port, *files)
        assert r.returncode == 0, r.stderr
        r = netns.run("storescu", "-aec", "STORESCP", "127.0.0.1", scp.port, *files)
        assert r.returncode == 0, r.stderr
        assert orthanc.instance_count() == 2
        from pydicom import dcmread
        uid = dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
        assert uid in orthanc.sop_instance_uids()
        assert orthanc.file_of(uid)[128:132] == b"DICM"
        assert len(scp.files()) == 2
    finally:
        orthanc.stop()
        scp.stop()
