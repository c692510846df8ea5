"""The memory an ISO image takes to build and to check: flat, whatever the number of files.

A file-set of 10 000 tiny instances is built into an image and read back in
a child process of its own, so that what is measured is the build and the
check and nothing else of the test run: the child resets its peak RSS
(``/proc/self/clear_refs``) before each step and reports ``VmHWM``.  An
in-memory ISO tree (pycdlib) took 3-4 kB per file for each step (+40 MB to
build, +27 MB to verify these 10 000 files).

Above ``INLINE_MAX_FILES`` the image is built by ``xorriso -as mkisofs``;
the tests here check that its image has the same names in all three trees
and the same identifiers as the in-process one, and that it can be
cancelled and fails cleanly.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import mediakit as K
import pytest

from dicombox.media.errors import MediaError
from dicombox.media.fileset import build_fileset
from dicombox.media.iso import build_iso
from dicombox.media.verify import verify_iso

FILES = 10_000
#: What the media service may use at most, whatever the job (issue 7).
SERVICE_LIMIT = 80 * 1024 * 1024
#: Growth allowed for each step: a fixed part and a few hundred bytes a file.
FIXED_ALLOWANCE = 3 * 1024 * 1024
PER_FILE = 300

ISO_FILE = re.compile(r"^[A-Z0-9_]{1,8}\.([A-Z0-9_]{0,3});1$")

CHILD = r"""
import json, sys
from pathlib import Path

from dicombox.media.iso import build_iso
from dicombox.media.verify import verify_iso


def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measured(step):
    Path("/proc/self/clear_refs").write_text("5")   # reset VmHWM to the current RSS
    before = status("VmRSS")
    step()
    return {"before": before, "peak": status("VmHWM")}


files = [tuple(f) for f in json.loads(Path(sys.argv[1]).read_text())]
root, image = Path(sys.argv[2]), Path(sys.argv[3])
report = {"build": measured(lambda: build_iso(root, image, "MEM")),
          "verify": measured(lambda: verify_iso(image, files))}
print(json.dumps(report))
"""


def _tiny_fileset(root: Path, count: int) -> list[tuple[str, str, int]]:
    """``count`` small files in series directories of 100, as a file-set lays them out."""
    manifest = []
    for i in range(count):
        rel = f"PT000000/ST{i // 1000:06d}/SE{i // 100:06d}/IM{i % 100:06d}"
        data = b"DICM" + i.to_bytes(4, "little") * (100 + i % 50)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        manifest.append((rel, hashlib.sha256(data).hexdigest(), len(data)))
    return manifest


def test_ten_thousand_files_are_built_and_read_back_in_flat_memory(tmp_path):
    manifest = _tiny_fileset(tmp_path / "fs", FILES)
    (tmp_path / "files.json").write_text(json.dumps(manifest))
    image = tmp_path / "disc.iso"
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "files.json"),
                        str(tmp_path / "fs"), str(image)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    for step in ("build", "verify"):
        growth = report[step]["peak"] - report[step]["before"]
        assert growth < FIXED_ALLOWANCE + PER_FILE * FILES, (step, report)
        assert report[step]["peak"] < SERVICE_LIMIT, (step, report)
    # The image is whole: isoinfo lists every file in the Rock Ridge tree.
    names = K.iso_listing_names(image, "-R")
    assert sum(name.startswith("IM") for name in names) == FILES


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A job's file-set, built in-process and by xorriso."""
    K.require("xorriso", "isoinfo")
    tmp = tmp_path_factory.mktemp("isoboth")
    files = K.job_files(tmp / "spool")
    instances = [K.source(p) for group in files.values() for p in group]
    result = build_fileset(instances, tmp / "fs", fileset_id="20260101-0001",
                           profile="STD-GEN-CD", label=K.label())
    progress = []
    sizes = {
        "inline": build_iso(tmp / "fs", tmp / "inline.iso", "20260101_0001_1OF1"),
        "xorriso": build_iso(tmp / "fs", tmp / "xorriso.iso", "20260101_0001_1OF1",
                             progress=lambda d, t: progress.append((d, t)),
                             inline_max_files=0),
    }
    return tmp, result, sizes, progress


def test_xorriso_builds_the_same_names_and_identifiers(both):
    tmp, result, sizes, progress = both
    image = tmp / "xorriso.iso"
    size = sizes["xorriso"]
    assert size == image.stat().st_size and size % 2048 == 0
    assert progress and progress[-1] == (size, size)
    d = K.run("isoinfo", "-d", "-i", image, check=True).stdout
    assert "Volume id: 20260101_00_1OF1" in d
    assert "Application id: DICOMBOX" in d
    assert "Joliet with UCS level 3 found" in d
    assert "Rock Ridge signatures" in d
    for flags in ((), ("-J",), ("-R",)):
        ours = sorted(K.iso_listing_names(image, *flags))
        assert ours == sorted(K.iso_listing_names(tmp / "inline.iso", *flags)), flags
    for name in K.iso_listing_names(image):
        assert ISO_FILE.match(name) or re.match(r"^[A-Z0-9_]{1,8}$", name), name
    extracted = K.extract_iso(image, tmp / "out")
    assert extracted == {rel: sha for rel, sha, _ in result.files}
    verify_iso(image, result.files)


def test_xorriso_build_cancelled_or_missing_leaves_nothing(both, tmp_path):
    tmp, *_ = both
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(MediaError) as err:
        build_iso(tmp / "fs", tmp_path / "x.iso", "X", cancel=cancel, inline_max_files=0)
    assert err.value.kind == "cancelled"
    with pytest.raises(MediaError) as err:
        build_iso(tmp / "fs", tmp_path / "x.iso", "X", inline_max_files=0,
                  xorriso=str(tmp_path / "no-xorriso"))
    assert err.value.kind == "build-failed" and "not installed" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_verify_reads_the_image_and_names_what_is_wrong(both, tmp_path):
    tmp, result, *_ = both
    for name in ("inline.iso", "xorriso.iso"):
        image = tmp / name
        verify_iso(image, result.files)
        with pytest.raises(MediaError) as err:
            verify_iso(image, [*result.files, ("PT000000/NOTHERE", "0" * 64, 1)])
        assert err.value.kind == "verify-failed" and "PT000000/NOTHERE is missing" \
            in str(err.value)
        rel, sha, size = result.files[-1]
        with pytest.raises(MediaError) as err:
            verify_iso(image, [(rel, sha, size + 1)])
        assert err.value.kind == "verify-failed" and f"{rel} differs" in str(err.value)
        # An image cut short inside its last DICOM file.
        cut = tmp_path / f"cut-{name}"
        data = image.read_bytes()
        cut.write_bytes(data[:data.rfind(b"DICM") + 100])
        with pytest.raises(MediaError) as err:
            verify_iso(cut, result.files)
        assert err.value.kind == "verify-failed"
    with pytest.raises(MediaError) as err:
        verify_iso(tmp_path / "absent.iso", result.files)
    assert err.value.kind == "verify-failed" and "absent.iso" in str(err.value)
