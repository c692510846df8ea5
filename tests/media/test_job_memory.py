"""A media job's memory does not follow its number of instances.

The same job, N and then 4N small instances in the same three series, is
planned (spanning on: the writer reports a capacity), built, written and
verified by the media service's :class:`JobRunner`, each size in a child
process of its own: as an ISO image written to a folder (what the optical
writer does, but for the burn) and as a file-set copied to a USB stick (a
folder here) and read back file by file.  The child measures each step with tracemalloc: the
peak of Python's allocations during the step, above what was allocated when
it started.  Holding anything per instance (a list of the job for planning,
the file-set's sort entries, a set of SOP Instance UIDs, the directory
records' offsets, the manifest, a directory listing) shows as a peak that
grows with N: 300 to 1000 bytes an instance, some 0.4-1.3 MB for the 1800
more instances here; what is allowed is far less than that.  Everything
that depends only on the number of patients, studies and series is the same
in both runs.

tracemalloc, not RSS: it sees Python's own allocations only (SQLite's page
cache, bounded, is not counted), so the numbers hardly depend on the
machine, the allocator or the other tests.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from datagen import secondary_capture_16
from helpers import require

N = 600
SERIES = 3
STEPS = ("_plan", "_build", "_write", "_verify")
#: How much more a step may take for 4N instances than for N: noise, not 3N
#: of anything.  CPython keeps up to 2000 freed tuples of each small size for
#: reuse (tracemalloc still counts them; a full collection empties the lists),
#: and a step over 2400 files refills them more than one over 600: up to some
#: 100 kB.  Holding anything per instance shows as 500 kB or more.
ALLOWED_GROWTH = 256 * 1024

SC = "1.2.840.10008.5.1.4.1.1.7"

CHILD = r"""
import functools, gc, json, os, sys, tracemalloc
from pathlib import Path
from types import SimpleNamespace

from dicombox.config import parse
from dicombox.media import iso, verify
from dicombox.media import jobs as J
from dicombox.media.jobs import Group, JobStore
from dicombox.media.runner import Execution, JobRunner
from dicombox.media.writers import UsbWriter
from dicombox.store import InstanceStore

rows = json.loads(Path(sys.argv[1]).read_text())
root = Path(sys.argv[2])
store = InstanceStore(root / "state", "media", migrations=J.MIGRATIONS)
jobs = JobStore(store.db, store.root)
spool = store.root / "spool" / "study"
spool.mkdir(parents=True)
with store.db.write() as conn:
    for n, row in enumerate(rows, 1):
        src = Path(row.pop("file"))
        os.link(src, spool / src.name)
        info = SimpleNamespace(path=f"study/{src.name}", **row)
        job_id = jobs.add_instance(conn, n, info, Group("study", "study:1"))
jobs.close(job_id, "test")
del rows
config = parse(f'''
[box]
state_dir = "{root / 'state'}"
[media]
writer = "folder"
capacity_mb = 4000
udev = false
[media.folder]
directory = "{root / 'out'}"
''', "test", root)
runner = JobRunner(config, jobs, store.root)
if sys.argv[4] == "usb":
    (root / "stick").mkdir()
    runner._writer = UsbWriter(root / "stick", require_mount=False)
runner.refresh_medium(force=True)
# Up to INLINE_MAX_FILES files an image is built in-process by pycdlib, whose
# tree takes a few kB a file (bounded by that limit); both sizes go to xorriso.
iso.build_iso = functools.partial(iso.build_iso, inline_max_files=0)
# Files are copied and hashed a chunk at a time, a smaller file in one read:
# the DICOMDIR (some 190 bytes an instance) is below the 1 MiB chunk for
# both sizes here, so its one read would follow N.  With smaller chunks,
# both runs read full ones.
verify.CHUNK = 64 * 1024
peaks = {}


def measured(name, step):
    def run(*args, **kwargs):
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            return step(*args, **kwargs)
        finally:
            peaks[name] = tracemalloc.get_traced_memory()[1] - start
    return run


for name in sys.argv[3].split(","):
    setattr(runner, name, measured(name, getattr(runner, name)))
# Noise that is not the job's, out of the way before tracing starts:
# - pathlib interns every path component, and the interpreter's table of
#   interned strings is reallocated now and then as names come and go (a
#   block of a few MB whose size follows the modules loaded, not the job):
#   it gets room for many more names, so no reallocation falls into a step;
# - pydicom leaves a small reference cycle per multi-valued element (a
#   directory record's File ID...), garbage until the collector's next pass
#   over the generation it has reached: what exists now is frozen (out of
#   the collector's way) and every pass is a full one, so little waits.
room = [sys.intern(f"room-{i}") for i in range(100_000)]
del room
gc.collect()
gc.freeze()
gc.set_threshold(200, 1, 1)
tracemalloc.start()
runner.execute(Execution(job_id))
tracemalloc.stop()
job = jobs.job(job_id)
print(json.dumps({"state": job["state"], "volumes": job["volumes"], "peaks": peaks,
                  "files": len(jobs.files(job_id, 1))}))
"""


def _instances(directory: Path, count: int) -> list[dict]:
    """``count`` 16x16 Secondary Capture images in SERIES series of one study."""
    directory.mkdir(parents=True)
    study = generate_uid()
    series = [generate_uid() for _ in range(SERIES)]
    rows = []
    for i in range(count):
        path = directory / f"SC{i:05d}.dcm"
        ds = secondary_capture_16(path, study, series[i % SERIES], ("Memory^Test", "PMEM"),
                                  i % SERIES + 1, i // SERIES + 1, i)
        data = path.read_bytes()
        rows.append({"file": str(path), "sop_instance_uid": ds.SOPInstanceUID,
                     "sop_class_uid": SC, "study_instance_uid": study,
                     "series_instance_uid": ds.SeriesInstanceUID, "patient_id": "PMEM",
                     "patient_name": "Memory^Test", "modality": "OT",
                     "study_description": "", "study_date": "20260101",
                     "transfer_syntax_uid": ExplicitVRLittleEndian, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})
    return rows


def _run_job(tmp: Path, count: int, writer: str) -> dict:
    rows = tmp / "rows.json"
    rows.write_text(json.dumps(_instances(tmp / "src", count)))
    r = subprocess.run([sys.executable, "-c", CHILD, str(rows), str(tmp / "box"),
                        ",".join(STEPS), writer], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["state"] == "done" and report["volumes"] == 1, report
    # The instances, DICOMDIR, README.TXT, INDEX.HTM and a page per study.
    assert report["files"] == count + 4, report
    return report


@pytest.fixture(scope="module", params=["iso", "usb"])
def runs(request, tmp_path_factory):
    require("xorriso")
    return {n: _run_job(tmp_path_factory.mktemp(f"{request.param}{n}"), n, request.param)
            for n in (N, 4 * N)}


@pytest.mark.parametrize("step", STEPS)
def test_a_job_step_takes_no_more_memory_for_four_times_the_instances(runs, step):
    small, large = runs[N]["peaks"][step], runs[4 * N]["peaks"][step]
    assert large - small < ALLOWED_GROWTH, (
        f"{step}: peak {small / 1024:.0f} KiB for {N} instances, "
        f"{large / 1024:.0f} KiB for {4 * N}: "
        f"{(large - small) / (3 * N):.0f} bytes more per instance")
