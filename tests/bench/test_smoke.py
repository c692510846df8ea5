"""The benchmark harness runs end to end on tiny data, so it does not rot.

Nothing here measures anything: ``python -m bench --smoke`` uses a few
kilobytes of data and one repetition; the test checks that every case ran
against the real programs, that the router received everything, and that
the Markdown summary and the JSON file agree.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("storescu", "storescp", "echoscu", "dcmmkdir", "dcmdjpeg", "dcmcjpeg", "xorriso",
         "unshare")


def test_bench_smoke_run(tmp_path):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists():
        missing.append("Orthanc")
    if missing:
        pytest.fail(f"missing bench peers: {', '.join(missing)} (run scripts/install-peers.sh)")
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--datasets", "tiny,multiframe",
                        "--e2e-datasets", "tiny", "--data", str(tmp_path / "data"),
                        "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = list(out.glob("bench-*-smoke.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    assert not list(out.glob("work-*")), "the work folder is removed"

    by_case = {}
    for c in results["cases"]:
        by_case.setdefault(c["case"], []).append(c)
    assert [c["dataset"] for c in by_case["receive"]] == ["tiny", "multiframe"]
    for c in by_case["receive"]:
        for name in ("storescp", "orthanc", "router"):
            rec = c["receivers"][name]
            assert rec["error"] is None, rec
            assert rec["median_seconds"] > 0
        assert c["receivers"]["router"]["max_peak_rss"] > 0
        assert c["ratio"] > 0
        flushes = c["durability_floor"]
        assert flushes["measured"] > 0 and flushes["seconds"] > 0
        assert 0 < c["ceiling"] < 1
    # Tiny instances are committed with their bytes (the store's journal).
    tiny = by_case["receive"][0]["durability_floor"]
    assert tiny["journaled"] == tiny["measured"]
    (e2e,) = by_case["end-to-end"]
    if not e2e.get("skipped"):
        # (Counted in clock ticks: a few tiny instances may take less than one.)
        for summary, key in ((e2e["ours"], "median_cpu_seconds"),
                             (e2e["ours"], "median_orthanc_cpu_seconds"),
                             (e2e["reference"], "median_orthanc_cpu_seconds")):
            assert summary[key] is not None and summary[key] >= 0, (key, summary)
        assert "End to end, CPU time" in r.stdout
    for name in ("end-to-end", "DICOMDIR", "ISO", "transcode"):
        (case,) = by_case[name]
        if case.get("skipped"):
            continue
        assert case["ours"]["error"] is None, case
        assert case["reference"]["error"] is None, case
        assert case["ratio"] > 0
    assert [c["label"] for c in by_case["media service"]] == \
        ["10 tiny -> disc image", "20 tiny (DICOMDIR) -> disc image"]
    for case in by_case["media service"]:
        assert case["ours"]["error"] is None, case
        assert case["ours"]["median_seconds"] > 0 and case["ours"]["max_peak_rss"] > 0
    assert results["peak_rss_by_process"]["media service"] > 0
    assert results["peak_rss_ours"] > 0
    assert results["tools"]["dcmtk storescu"]
    assert results["machine"]["cores"] >= 1

    # The summary printed on stdout is the one for this JSON file.
    assert "| router / storescp |" in r.stdout
    assert str(files[0]) in r.stdout
    for c in by_case["receive"]:
        assert f"| {c['label']} |" in r.stdout
