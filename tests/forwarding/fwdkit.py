"""Helpers for the forwarding tests: peers as destinations, waiting, reading queues."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers import DICOMBOX
from peers import Orthanc, StoreSCP


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def router_port(proc) -> int:
    return tomllib.loads(Path(proc.config).read_text())["router"]["port"]


def destination(name: str, peer, **extra) -> dict:
    """A [[destinations]] table for an Orthanc or StoreSCP peer."""
    if isinstance(peer, Orthanc):
        aet, port = peer.aet, peer.dicom_port
    else:
        aet, port = peer.aet, peer.port
    return {"name": name, "ae_title": aet, "host": "127.0.0.1", "port": port, **extra}


#: Fast retries so that tests do not wait for production back-offs.
FAST = {"retry_initial": 0.2, "retry_max": 1.0, "idle_poll": 1.0}


def send(ns, port: int, files, *extra, aet: str = "MODALITY", check: bool = True):
    r = ns.run("storescu", "-aet", aet, "-aec", "DICOMBOX", *extra, "127.0.0.1", port,
               *files)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


#: storescu's option proposing each compressed transfer syntax
PROPOSE = {
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.90": "-xv",
}


def send_as_stored(ns, port: int, files, aet: str = "MODALITY") -> None:
    """storescu proposing, for each group of files, the syntax they are stored in."""
    groups: dict[str, list] = {}
    for f in files:
        ts = str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(PROPOSE.get(ts, ""), []).append(f)
    for flag, group in groups.items():
        send(ns, port, group, *([flag] if flag else []), aet=aet)


def sop_uid(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def orthanc_uids(orthanc: Orthanc) -> set[str]:
    """Every SOP Instance UID Orthanc holds, in one REST call."""
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in found}


def orthanc_file(orthanc: Orthanc, sop_instance_uid: str) -> bytes:
    """The Part 10 file Orthanc stored for a SOP Instance UID."""
    found = orthanc.post("/tools/find", {"Level": "Instance",
                                         "Query": {"SOPInstanceUID": sop_instance_uid}})
    assert len(found) == 1, f"{sop_instance_uid} is not in {orthanc.aet}"
    r = orthanc.ns.run("curl", "-sf", f"http://127.0.0.1:{orthanc.http_port}/instances/"
                       f"{found[0]}/file", text=False)
    assert r.returncode == 0
    return r.stdout


def storescp_uids(scp: StoreSCP) -> list[str]:
    """SOP Instance UIDs of every file storescp wrote (duplicates included with +uf)."""
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()]


def queue_rows(state_dir: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{state_dir / 'router' / 'index.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM forward_queue ORDER BY id")]
    finally:
        conn.close()


def cli(config: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*DICOMBOX, "--config", str(config), *map(str, args)],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def queue_json(config: Path) -> dict:
    return json.loads(cli(config, "queue", "--json").stdout)


def delivered(config: Path, name: str, count: int) -> bool:
    return queue_json(config).get(name, {}).get("delivered", 0) >= count


class Peers:
    """Peers started by a test, all stopped in teardown."""

    def __init__(self, ns, tmp: Path):
        self.ns, self.tmp = ns, tmp
        self.started: list = []

    def orthanc(self, name: str = "orthanc", aet: str = "ORTHANC", start: bool = True,
                **kw) -> Orthanc:
        o = Orthanc(self.ns, self.tmp / name, aet=aet, **kw)
        self.started.append(o)
        return o.start() if start else o

    def storescp(self, name: str = "scp", aet: str = "STORESCP", extra=None,
                 start: bool = True) -> StoreSCP:
        s = StoreSCP(self.ns, self.tmp / name, aet=aet, extra=extra)
        self.started.append(s)
        return s.start() if start else s

    def close(self) -> None:
        for p in self.started:
            p.stop()


def explicit_only_config(path: Path, sop_classes) -> Path:
    """A storescp configuration (-xf FILE Explicit) accepting Explicit VR LE only."""
    lines = ["[[TransferSyntaxes]]", "[ExplicitOnly]",
             "TransferSyntax1 = LittleEndianExplicit", "", "[Echo]",
             "TransferSyntax1 = LittleEndianImplicit", "",
             "[[PresentationContexts]]", "[ExplicitContexts]",
             "PresentationContext1 = 1.2.840.10008.1.1\\Echo"]
    for i, uid in enumerate(sop_classes, 2):
        lines.append(f"PresentationContext{i} = {uid}\\ExplicitOnly")
    lines += ["", "[[Profiles]]", "[Explicit]", "PresentationContexts = ExplicitContexts", ""]
    path.write_text("\n".join(lines))
    return path


def multiframe(path, frames: int, rows: int, cols: int):
    """A multi-frame 16-bit Explicit VR LE instance; returns its first frame."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    frame = (np.add.outer(np.arange(rows), np.arange(cols)) % 4096).astype("<u2")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = b"".join((frame + i).astype("<u2").tobytes() for i in range(frames))
    ds.save_as(path, enforce_file_format=True)
    return frame
