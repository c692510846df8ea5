"""The memory a file-set build takes: a few hundred bytes per instance, not a Dataset each.

The build runs in a child process of its own so that what is measured is
the build and nothing else of the test run: the child reads the job (its
SourceInstances, as the media service has them), resets its peak RSS
(``/proc/self/clear_refs``), builds, and reports ``VmHWM``.  ``VmHWM``
rather than ``wait4``'s ``ru_maxrss``: the latter also counts the memory of
the pytest process the child was forked from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mediakit as K
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from datagen import secondary_capture_16

INSTANCES = 3000
#: What the media service may use at most, whatever the job (issue 7).
SERVICE_LIMIT = 80 * 1024 * 1024
#: Growth allowed during the build: a fixed part and a few hundred bytes per
#: instance (sort key, File ID, manifest line).  A pydicom FileSet took about
#: 10 kB per instance (28 MB for these 3000).
FIXED_ALLOWANCE = 2 * 1024 * 1024
PER_INSTANCE = 1536

SC = "1.2.840.10008.5.1.4.1.1.7"

CHILD = r"""
import gc, json, sys
from datetime import datetime
from pathlib import Path

from dicombox.media.fileset import MediaLabel, SourceInstance, build_fileset


def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


rows = json.loads(Path(sys.argv[1]).read_text())
instances = [SourceInstance(path=Path(r.pop("path")), **r) for r in rows]
del rows
gc.collect()
Path("/proc/self/clear_refs").write_text("5")   # reset VmHWM to the current RSS
before = status("VmRSS")
label = MediaLabel(1, 1, "MEM", "box", "Hospital", datetime(2026, 1, 1))
result = build_fileset(instances, Path(sys.argv[2]), fileset_id="MEM",
                       profile="STD-GEN-CD", label=label)
print(json.dumps({"before": before, "peak": status("VmHWM"),
                  "instances": result.instances}))
"""


def _tiny_job(directory: Path, count: int) -> list[dict]:
    """``count`` 16x16 Secondary Capture images: 2 patients, 3 studies, 100 per series."""
    directory.mkdir(parents=True)
    rows = []
    studies = [generate_uid() for _ in range(3)]
    series = ""
    for i in range(count):
        if i % 100 == 0:
            series = generate_uid()
        study = studies[(i // 1000) % 3]
        patient = ("Tiny^One", "PTINY1") if study == studies[0] else ("Tiny^Two", "PTINY2")
        path = directory / f"SC{i:05d}.dcm"
        ds = secondary_capture_16(path, study, series, patient, i // 100 + 1, i % 100 + 1, i)
        rows.append({"path": str(path), "sop_instance_uid": ds.SOPInstanceUID,
                     "sop_class_uid": SC, "study_instance_uid": study,
                     "series_instance_uid": series, "patient_id": patient[1],
                     "transfer_syntax_uid": ExplicitVRLittleEndian,
                     "size": path.stat().st_size, "sha256": K.sha256(path)})
    return rows


def test_building_thousands_of_instances_takes_little_memory(tmp_path):
    rows = _tiny_job(tmp_path / "spool", INSTANCES)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(rows))
    out = tmp_path / "fs"
    r = subprocess.run([sys.executable, "-c", CHILD, str(job), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["instances"] == INSTANCES
    growth = report["peak"] - report["before"]
    assert growth < FIXED_ALLOWANCE + PER_INSTANCE * INSTANCES, report
    assert report["peak"] < SERVICE_LIMIT, report
    # What was built is whole: every instance has its record, dicom3tools agrees.
    K.require("dciodvfy")
    v = K.run("dciodvfy", out / "DICOMDIR")
    assert v.returncode == 0 and "Error" not in v.stderr + v.stdout, v.stderr[-3000:]
    records = dcmread(out / "DICOMDIR").DirectoryRecordSequence
    kinds = [rec.DirectoryRecordType for rec in records]
    assert kinds.count("IMAGE") == INSTANCES
    assert (kinds.count("PATIENT"), kinds.count("STUDY"), kinds.count("SERIES")) == (2, 3, 30)
    assert sorted(K.referenced_files(out)) == sorted(
        rel for rel in K.tree_checksums(out) if rel.startswith("PT"))
