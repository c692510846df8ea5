"""Association policy, bad input and the disk reserve, seen from DCMTK."""

import socket
import time

import pytest
from pydicom import dcmread

from datagen import ct_series
from helpers import dcmtk, require, tmp_leftovers


def _port(router):
    return router.config.read_text().split("[router]")[1].split("port = ")[1].split()[0]


def test_wrong_called_ae_is_rejected_reason_7(box):
    require("echoscu")
    router = box("router")
    r = dcmtk("echoscu", "-aet", "CT1", "-aec", "NOT_THE_BOX", "127.0.0.1", _port(router))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Rejected Permanent" in out and "Called AE Title Not Recognized" in out


def test_calling_ae_not_allowed_is_rejected_reason_3(box):
    router = box("router", router={"allowed_calling_aets": ["CT1"]})
    r = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "DICOMBOX", "127.0.0.1", _port(router))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Rejected Permanent" in out and "Calling AE Title Not Recognized" in out
    ok = dcmtk("echoscu", "-aet", "CT1", "-aec", "DICOMBOX", "127.0.0.1", _port(router))
    assert ok.returncode == 0, ok.stderr


def test_peer_address_not_allowed_is_rejected_reason_3(box):
    router = box("router", router={"allowed_peers": ["192.0.2.0/24"]})
    r = dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", _port(router))
    assert r.returncode != 0
    assert "Calling AE Title Not Recognized" in r.stdout + r.stderr
    router2 = box("router", router={"allowed_peers": ["127.0.0.0/8"]})
    assert dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", _port(router2)).returncode == 0


def test_disk_reserve_refuses_with_a700_and_stays_up(box, tmp_path):
    require("storescu")
    router = box("router", storage={"reserve_mb": 1 << 40})
    files = ct_series(tmp_path / "ct", 2)
    r = dcmtk("storescu", "-v", "-aec", "DICOMBOX", "127.0.0.1", _port(router), *files)
    out = r.stdout + r.stderr
    assert "Received Store Response (Refused: OutOfResources)" in out, out
    assert not list((tmp_path / "state" / "router" / "spool").iterdir())
    assert not tmp_leftovers(tmp_path / "state" / "router" / "tmp")
    assert router.proc.poll() is None
    assert dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", _port(router)).returncode == 0


def test_unsupported_sop_class_context_is_rejected(box, tmp_path):
    router = box("router")
    f = ct_series(tmp_path / "ct", 1)[0]
    ds = dcmread(f)
    # VL Whole Slide Microscopy: a standard class the router does not accept.
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd)
    r = dcmtk("storescu", "-R", "-aec", "DICOMBOX", "127.0.0.1", _port(router), odd)
    assert r.returncode != 0
    assert "no acceptable presentation contexts" in (r.stdout + r.stderr).lower()
    assert router.proc.poll() is None


def test_private_sop_class_from_config_is_accepted(box, tmp_path):
    router = box("router", storage={"private_sop_classes": ["1.2.3.4.5.6.7.8.9"]})
    f = ct_series(tmp_path / "ct", 1)[0]
    ds = dcmread(f)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7.8.9"
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd)
    r = dcmtk("dcmsend", "-v", "-nuc", "-aec", "DICOMBOX", "127.0.0.1", _port(router), odd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "with status SUCCESS" in r.stdout + r.stderr


def test_undecodable_dataset_gets_c210_and_nothing_is_kept(box, tmp_path):
    """A dataset whose element lengths run past its end, sent by a pynetdicom SCU
    streaming raw bytes (DCMTK refuses to send a file it cannot parse)."""
    from pynetdicom import AE, _config
    router = box("router")
    f = ct_series(tmp_path / "ct", 1)[0]
    ds = dcmread(f, stop_before_pixels=True)
    raw = f.read_bytes()
    # Keep the file meta, then a dataset whose first element claims 32 KB of a
    # 3-byte value.
    meta_end = 144 + int.from_bytes(raw[140:144], "little")
    bad = raw[:meta_end] + b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2"
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bad)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="BROKEN")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", int(_port(router)), ae_title="DICOMBOX")
        assert assoc.is_established
        status = assoc.send_c_store(broken)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status.Status in (0xC210, 0xA900), hex(status.Status)
    assert not list((tmp_path / "state" / "router" / "spool").iterdir())
    assert not tmp_leftovers(tmp_path / "state" / "router" / "tmp")
    assert router.proc.poll() is None


@pytest.mark.parametrize("garbage", [
    b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",          # A-ABORT out of sequence
    b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16,           # A-ASSOCIATE-RQ, nonsense body
    b"\x42" * 4096,                                       # no PDU at all
    b"\x01\x00\xff\xff\xff\xff",                          # claims a 4 GB PDU, then closes
])
def test_malformed_pdus_do_not_hurt_the_router(box, garbage):
    router = box("router", network={"acse_timeout": 2})
    port = int(_port(router))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(garbage)
        s.settimeout(5)
        try:
            s.recv(1024)
        except (TimeoutError, ConnectionResetError):
            pass
    time.sleep(0.2)
    assert router.proc.poll() is None
    assert dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", str(port)).returncode == 0
    assert "Traceback" not in router.output()
