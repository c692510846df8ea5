"""The router forwards to real PACS (Orthanc, DCMTK storescp) by rules, converting when needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fwdkit import (
    FAST,
    cli,
    delivered,
    destination,
    explicit_only_config,
    multiframe,
    orthanc_file,
    orthanc_uids,
    queue_json,
    queue_rows,
    router_port,
    send_as_stored,
    sop_uid,
    storescp_uids,
    wait_for,
)
from pydicom import dcmread

from datagen import compress, cr_image, ct_series, sr_document

CT = "1.2.840.10008.5.1.4.1.1.2"
CR = "1.2.840.10008.5.1.4.1.1.1"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
LOSSLESS = ("jpeg-lossless", "jpeg-ls", "rle", "j2k-lossless")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fwd-data")
    out = {"ct": ct_series(d / "ct", 6), "cr": [cr_image(d / "cr")],
           "sr": [sr_document(d / "sr")]}
    sources = ct_series(d / "src", len(LOSSLESS) + 1, rows=96, cols=80, prefix="S")
    out["lossless"] = [compress(src, d / "c" / f"{kind}.dcm", kind)
                       for kind, src in zip(LOSSLESS, sources)]
    out["lossless_sources"] = sources[:len(LOSSLESS)]
    out["baseline"] = [compress(sources[-1], d / "c" / "jpeg-baseline.dcm", "jpeg-baseline")]
    return out


def _pixel_bytes(data: bytes) -> bytes:
    from io import BytesIO
    return dcmread(BytesIO(data)).PixelData


def test_two_orthancs_by_rules(box, netns, peers, data, tmp_path):
    """CT goes to one PACS, everything to the other; pixel data arrives bit for bit."""
    ct_pacs = peers.orthanc("ct-pacs", aet="CTPACS")
    archive = peers.orthanc("archive", aet="ARCHIVE")
    router = box("router", netns=netns,
                 destinations=[destination("ct-pacs", ct_pacs), destination("archive", archive)],
                 rules=[{"name": "ct", "modalities": ["CT"], "destinations": ["ct-pacs"]},
                        {"name": "everything", "destinations": ["archive"]}],
                 forwarding={"rule_mode": "all", **FAST})
    files = data["ct"] + data["cr"] + data["sr"] + data["lossless"]
    send_as_stored(netns, router_port(router), files)
    cts = data["ct"] + data["lossless"]
    wait_for(lambda: delivered(router.config, "archive", len(files))
             and delivered(router.config, "ct-pacs", len(cts)), what="both destinations")
    assert orthanc_uids(ct_pacs) == {sop_uid(f) for f in cts}
    assert orthanc_uids(archive) == {sop_uid(f) for f in files}
    for f in files:
        original = dcmread(f)
        if "PixelData" not in original:
            continue
        for pacs in (archive, ct_pacs) if f in cts else (archive,):
            got = _pixel_bytes(orthanc_file(pacs, original.SOPInstanceUID))
            assert got == original.PixelData, f"{f.name} pixel data differs in {pacs.aet}"
    q = queue_json(router.config)
    assert (q["archive"]["pending"], q["archive"]["dead"]) == (0, 0)
    assert q["ct-pacs"]["delivered"] == len(cts)
    rules = {r["destination"]: r["rule"] for r in queue_rows(tmp_path / "state")
             if r["sop_instance_uid"] == sop_uid(data["ct"][0])}
    assert rules == {"ct-pacs": "ct", "archive": "everything"}


def test_explicit_only_destination_gets_decompressed_originals(box, netns, peers, data,
                                                               tmp_path):
    """Lossless-compressed instances are decompressed keeping their UIDs; a lossy one is
    not passed on as if it were an original: it goes to dead-letter with the reason."""
    cfg = explicit_only_config(tmp_path / "explicit.cfg", [CT, CR])
    scp = peers.storescp("scp", extra=["-xf", str(cfg), "Explicit"])
    router = box("router", netns=netns,
                 destinations=[destination("plain", scp,
                                           transfer_syntaxes=["ExplicitVRLittleEndian"])],
                 forwarding={"default_destinations": ["plain"], **FAST})
    files = data["lossless"] + data["baseline"]
    send_as_stored(netns, router_port(router), files)
    wait_for(lambda: delivered(router.config, "plain", len(data["lossless"])),
             what="decompressed instances")
    wait_for(lambda: queue_json(router.config)["plain"]["dead"] == 1, what="the lossy one dead")
    received = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, scp.files())}
    assert set(received) == {sop_uid(f) for f in data["lossless"]}
    for f, src in zip(data["lossless"], data["lossless_sources"]):
        ds = received[sop_uid(f)]
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert np.array_equal(ds.pixel_array, dcmread(src).pixel_array), f.name
        assert "LossyImageCompression" not in ds
    dead = [r for r in queue_rows(tmp_path / "state") if r["state"] == "dead"]
    assert [r["sop_instance_uid"] for r in dead] == [sop_uid(data["baseline"][0])]
    assert "JPEG Baseline" in dead[0]["last_error"]
    assert "Table N.5-9" in dead[0]["last_error"]
    listing = cli(router.config, "queue", "list").stdout
    assert sop_uid(data["baseline"][0]) in listing and "Table N.5-9" in listing


def test_configured_lossy_route_gets_new_uids(box, netns, peers, data, tmp_path):
    """A destination configured for lossy JPEG 2000 receives new, derived instances."""
    pacs = peers.orthanc("remote", aet="REMOTE")
    router = box("router", netns=netns,
                 destinations=[destination("remote", pacs, transfer_syntaxes=["JPEG2000"],
                                           offer_stored=False, lossy=True, lossy_ratio=8.0)],
                 forwarding={"default_destinations": ["remote"], **FAST})
    files = data["ct"][:3]
    send_as_stored(netns, router_port(router), files)
    wait_for(lambda: delivered(router.config, "remote", 3), what="lossy copies")
    originals = {sop_uid(f) for f in files}
    got = orthanc_uids(pacs)
    assert len(got) == 3 and not got & originals
    rows = {r["sop_instance_uid"]: r for r in queue_rows(tmp_path / "state")}
    assert {r["sent_sop_instance_uid"] for r in rows.values()} == got
    for f in files:
        sent = rows[sop_uid(f)]["sent_sop_instance_uid"]
        ds = dcmread(__import__("io").BytesIO(orthanc_file(pacs, sent)))
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
        assert ds.LossyImageCompression == "01"
        assert float(ds.LossyImageCompressionRatio) > 1
        assert ds.LossyImageCompressionMethod == "ISO_15444_1"
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == sop_uid(f)
        assert ds.ImageType[0] == "DERIVED"
        assert ds.StudyInstanceUID == dcmread(f).StudyInstanceUID
        assert ds.pixel_array.shape == dcmread(f).pixel_array.shape


def test_one_destination_down_does_not_delay_the_other(box, netns, peers, data,
                                                       tmp_path):
    """The healthy destination gets everything at once, exactly once; the other drains its
    backlog when it comes up."""
    healthy = peers.storescp("healthy", extra=["+xa", "+uf"])
    late = peers.orthanc("late", aet="LATE", start=False)
    router = box("router", netns=netns,
                 destinations=[destination("healthy", healthy), destination("late", late)],
                 forwarding={"default_destinations": ["healthy", "late"], **FAST})
    files = data["ct"] + data["cr"] + data["sr"]
    send_as_stored(netns, router_port(router), files)
    wait_for(lambda: len(healthy.files()) >= len(files), what="the healthy destination")
    q = queue_json(router.config)
    assert q["healthy"]["delivered"] == len(files)
    assert q["late"]["delivered"] == 0
    assert q["late"]["pending"] + q["late"]["retry"] + q["late"]["in_flight"] == len(files)
    wait_for(lambda: queue_json(router.config)["late"]["last_error"], what="an error noted")
    assert "cannot connect" in queue_json(router.config)["late"]["last_error"]
    late.start()
    wait_for(lambda: delivered(router.config, "late", len(files)), what="the backlog")
    assert orthanc_uids(late) == {sop_uid(f) for f in files}
    uids = storescp_uids(healthy)
    assert sorted(uids) == sorted(sop_uid(f) for f in files), "sent twice to the healthy one"
    summary = cli(router.config, "queue").stdout
    assert "healthy" in summary and "late" in summary


def test_dead_letter_and_retry(box, netns, peers, data, tmp_path):
    """A SOP class the destination does not support goes straight to dead-letter; once the
    destination supports it, `queue retry --dead` delivers it."""
    cfg = explicit_only_config(tmp_path / "ct-only.cfg", [CT])
    scp = peers.storescp("scp", extra=["-xf", str(cfg), "Explicit"])
    router = box("router", netns=netns, destinations=[destination("pacs", scp)],
                 forwarding={"default_destinations": ["pacs"], **FAST})
    files = data["ct"][:2] + data["sr"]
    send_as_stored(netns, router_port(router), files)
    wait_for(lambda: queue_json(router.config)["pacs"]["dead"] == 1, what="dead-letter")
    q = queue_json(router.config)["pacs"]
    assert (q["delivered"], q["pending"]) == (2, 0)
    row = next(r for r in queue_rows(tmp_path / "state") if r["state"] == "dead")
    assert row["sop_instance_uid"] == sop_uid(data["sr"][0])
    assert "SOP class not supported" in row["last_error"]
    assert row["attempts"] == 1

    r = cli(router.config, "queue", "retry", "--destination", "nope", check=False)
    assert r.returncode == 2 and "unknown destination 'nope'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    scp.stop()
    cfg = explicit_only_config(tmp_path / "ct-sr.cfg", [CT, SR])
    scp.extra = ["-xf", str(cfg), "Explicit"]
    scp.start()
    r = cli(router.config, "queue", "retry", "--dead", "--destination", "pacs")
    assert r.stdout.startswith("1 ")
    wait_for(lambda: delivered(router.config, "pacs", 3), what="the retried instance")
    assert sop_uid(data["sr"][0]) in storescp_uids(scp)


def test_undelivered_items_expire_to_dead_letter(box, tmp_path, data):
    """Items older than forwarding.max_age_hours go to dead-letter with the reason."""
    from helpers import free_port
    router = box("router", destinations=[{"name": "nowhere", "ae_title": "NOWHERE",
                                          "host": "127.0.0.1", "port": free_port()}],
                 forwarding={"default_destinations": ["nowhere"], "max_age_hours": 0.0005,
                             **FAST})
    from helpers import dcmtk
    r = dcmtk("storescu", "-aec", "DICOMBOX", "127.0.0.1", router_port(router),
              *data["ct"][:2])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: queue_json(router.config)["nowhere"]["dead"] == 2, what="expiry")
    rows = queue_rows(tmp_path / "state")
    assert all("not delivered within" in r["last_error"] for r in rows)
    assert all("cannot connect" in r["last_error"] for r in rows)


def test_cleanup_removes_only_what_was_delivered(box, netns, peers, data,
                                                 tmp_path):
    """Forwarded instances leave the spool by age; undelivered ones stay."""
    scp = peers.storescp("scp")
    down = peers.storescp("down", aet="DOWN", start=False)
    router = box("router", netns=netns,
                 destinations=[destination("up", scp), destination("down", down)],
                 rules=[{"name": "ct", "modalities": ["CT"], "destinations": ["up"]},
                        {"name": "rest", "destinations": ["down"]}],
                 cleanup={"max_age_hours": 0.0001, "interval": 0.2},
                 forwarding=FAST)
    files = data["ct"][:3] + data["cr"]
    send_as_stored(netns, router_port(router), files)
    spool = tmp_path / "state" / "router" / "spool"

    def spool_files():
        return [p for p in spool.rglob("*.dcm")]

    wait_for(lambda: len(spool_files()) == 1, what="the forwarded instances removed")
    rows = queue_rows(tmp_path / "state")
    assert [r["sop_instance_uid"] for r in rows] == [sop_uid(data["cr"][0])]
    assert rows[0]["state"] in ("pending", "retry", "sending")  # never delivered
    assert len(scp.files()) == 3
    r = cli(router.config, "spool", "list", "--json")
    assert [i["sop_instance_uid"] for i in __import__("json").loads(r.stdout)] == [
        sop_uid(data["cr"][0])]


def test_a_destination_taking_one_association_at_a_time(box, netns, peers, tmp_path):
    """DCMTK storescp serves one association at a time: the senders that cannot associate
    back off alone; no instance waits on them, none is attempted twice or sent twice."""
    from datagen import tiny_instances
    files = tiny_instances(tmp_path / "tiny", 150)
    scp = peers.storescp("single", extra=["+xa", "+uf"])
    router = box("router", netns=netns,
                 destinations=[destination("single", scp, max_associations=3, batch_size=20,
                                           acse_timeout=2.0)],
                 forwarding={"default_destinations": ["single"], **FAST})
    send_as_stored(netns, router_port(router), files)
    wait_for(lambda: delivered(router.config, "single", len(files)), what="all delivered")
    rows = queue_rows(tmp_path / "state")
    assert {r["attempts"] for r in rows} == {1}
    assert sorted(storescp_uids(scp)) == sorted(sop_uid(f) for f in files)


def test_forwarding_a_large_instance_does_not_hold_it_in_memory(box, netns, peers, tmp_path):
    """A 128 MB instance is forwarded (as stored, and converted) with the router's memory
    growing by far less than its size; a destination that drops the association while the
    router converts gets it on a new one."""
    import threading

    import psutil

    big = tmp_path / "big.dcm"
    multiframe(big, 256, 512, 512)          # 128 MB of pixel data
    size = big.stat().st_size
    plain = peers.storescp("plain", start=False)
    # This one drops an association idle for a second (while the router converts).
    jls = peers.storescp("jls", aet="JLS", extra=["+xa", "-ts", "1"], start=False)
    router = box("router", netns=netns,
                 destinations=[destination("plain", plain),
                               destination("jls", jls, transfer_syntaxes=["RLELossless"],
                                           offer_stored=False)],
                 forwarding={"default_destinations": ["plain", "jls"], **FAST})
    send_as_stored(netns, router_port(router), [big])
    top = psutil.Process(router.pid)
    [service] = [p for p in [top, *top.children(recursive=True)] if "serve" in p.cmdline()]
    base = service.memory_info().rss
    peak: dict[str, int] = {}
    mapped: dict[str, set[str]] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for p in [service, *service.children(recursive=True)]:
                try:
                    role = "worker" if "dicombox.transcoder" in p.cmdline() else "service"
                    peak[role] = max(peak.get(role, 0), p.memory_info().rss)
                    maps = Path(f"/proc/{p.pid}/maps").read_text()
                    mapped.setdefault(role, set()).update(
                        line.split()[-1] for line in maps.splitlines() if "numpy" in line)
                except (psutil.Error, OSError):
                    pass
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        plain.start()
        jls.start()
        wait_for(lambda: delivered(router.config, "plain", 1)
                 and delivered(router.config, "jls", 1), timeout=120, what="both copies")
    finally:
        done.set()
        sampler.join()
    growth = peak["service"] - base
    assert growth < size / 4, f"router grew by {growth >> 20} MB sending {size >> 20} MB"
    # The conversion ran in the transcoder's worker, itself bounded; the
    # service never loaded numpy.
    assert peak["worker"] < 64 * 2**20 + size / 4, f"worker peak {peak['worker'] >> 20} MB"
    assert not mapped["service"], sorted(mapped["service"])[:3]
    assert mapped["worker"]
    print(f"service {base >> 20} -> {peak['service'] >> 20} MB, "
          f"worker {peak['worker'] >> 20} MB")
    got = dcmread(plain.files()[0], defer_size=1024)
    assert got.SOPInstanceUID == sop_uid(big)
    rows = {r["destination"]: r for r in queue_rows(tmp_path / "state")}
    assert rows["jls"]["attempts"] == 1, rows["jls"]["last_error"]
    got = dcmread(jls.files()[0], defer_size=1024)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert got.SOPInstanceUID == sop_uid(big)
