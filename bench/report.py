"""What the results are measured on, and how they are shown.

The JSON file keeps every run (so medians can be recomputed or other
statistics taken); the Markdown table shows medians and the ratios the
targets are stated in.  A ratio is always "ours relative to the reference,
higher is better": throughput ratio for receiving and transcoding
(reference time / our time), and time ratio where the target is stated as a
time bound (our time / reference time, for DICOMDIR).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _first_line(args) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    out = (r.stdout + r.stderr).strip().splitlines()
    return out[0].strip() if out else ""


def _dcmtk(tool: str) -> str:
    line = _first_line([tool, "--version"])
    m = re.search(r"v(\d+\.\d+\.\d+)", line)
    return m.group(1) if m else line


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = _first_line(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--target", str(REPO)])
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "filesystem": fs,
        "load_average_at_start": list(os.getloadavg()),
    }


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def tools(orthanc_version: str = "") -> dict:
    rev = _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    orthanc = orthanc_version or _first_line([shutil.which("Orthanc") or "Orthanc",
                                              "--version"])
    return {
        "dicombox": f"{_package('dicombox')} ({rev})" if rev else _package("dicombox"),
        "pynetdicom": _package("pynetdicom"),
        "pydicom": _package("pydicom"),
        "pycdlib": _package("pycdlib"),
        "pylibjpeg-libjpeg": _package("pylibjpeg-libjpeg"),
        "dcmtk storescu": _dcmtk("storescu"),
        "dcmtk storescp": _dcmtk("storescp"),
        "dcmtk dcmmkdir": _dcmtk("dcmmkdir"),
        "dcmtk dcmdjpeg": _dcmtk("dcmdjpeg"),
        "orthanc": orthanc,
        "xorriso": _first_line(["xorriso", "-version"]),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_seconds(s) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_bytes(n) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.0f} MB"


def fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def verdict(value, target) -> str:
    """'ok' / 'below target' for a ratio that should reach ``target`` (both
    "higher is better")."""
    if value is None or target is None:
        return ""
    return "meets target" if value >= target else "below target"


def _e2e_cpu(case: dict) -> str:
    ref, ours = case["reference"], case["ours"]
    direct, orthanc, router = (ref.get("median_orthanc_cpu_seconds"),
                               ours.get("median_orthanc_cpu_seconds"),
                               ours.get("median_cpu_seconds"))
    if direct is None or orthanc is None or router is None:
        return ""
    return (f"{case['label']}: direct, Orthanc {fmt_seconds(direct)}; via router, "
            f"router {fmt_seconds(router)} + Orthanc {fmt_seconds(orthanc)}")


def _floor_cell(floor: dict | None) -> str:
    if not floor:
        return "-"
    return (f"{fmt_seconds(floor['seconds'])} "
            f"({floor['per_instance_seconds'] * 1000:.2f} ms/instance)")


def markdown(results: dict) -> str:
    """The summary tables, from the JSON structure written by ``__main__``."""
    lines = [f"# dicombox benchmark ({results['started']})", ""]
    m = results["machine"]
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores, "
              f"{m['memory_bytes'] / 2**30:.0f} GiB, {m['filesystem']}; "
              f"Python {m['python']}; load at start {m['load_average_at_start'][0]:.2f}. "
              f"Repetitions: {results['repetitions']} (medians).", ""]
    receive = [r for r in results["cases"] if r["case"] == "receive"]
    if receive:
        names = []
        for r in receive:
            for name in r["receivers"]:
                if name not in names:
                    names.append(name)
        lines += ["## Receive (DCMTK storescu, one association, loopback)", ""]
        head = "| data set | size | " + " | ".join(names) + \
               " | router / storescp | target | flushes alone | best with fsync " \
               "| router peak RSS |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in receive:
            cells = []
            for name in names:
                rec = r["receivers"].get(name)
                if rec is None or rec.get("error"):
                    cells.append("error" if rec else "-")
                    continue
                s = rec["median_seconds"]
                cpu = rec.get("median_cpu_seconds")
                cells.append(f"{fmt_seconds(s)} ({r['bytes'] / s / 1e6:.0f} MB/s, "
                             f"{r['instances'] / s:.0f}/s"
                             + ("" if cpu is None else f"; CPU {fmt_seconds(cpu)}") + ")")
            ratio = r.get("ratio")
            lines.append(f"| {r['label']} | {fmt_bytes(r['bytes'])} | " + " | ".join(cells)
                         + f" | {fmt_ratio(ratio)} | "
                         f"{'>= ' + fmt_ratio(r['target']) if r.get('target') else '-'} "
                         f"{verdict(ratio, r.get('target'))} | "
                         f"{_floor_cell(r.get('durability_floor'))} | "
                         f"{fmt_ratio(r.get('ceiling'))} | "
                         f"{fmt_bytes(r['receivers'].get('router', {}).get('max_peak_rss'))} |")
        lines += ["", "CPU: user and system time of the receiving process (all its threads) "
                  "during the sender's run. Flushes alone: what the durability contract "
                  "must still flush after each instance's last byte, measured without "
                  "network or receiver on the same disk (bench/floor.py), summed over the "
                  "data set. Best with fsync = storescp / (storescp + flushes alone): no "
                  "receiver that keeps the contract can do better on this machine.", ""]
    others = [r for r in results["cases"] if r["case"] != "receive"]
    if others:
        lines += ["## End to end, media, transcoding", "",
                  "| case | data | ours | reference | ratio | target | our peak RSS |",
                  "|---|---|---|---|---|---|---|"]
        for r in others:
            if r.get("skipped"):
                lines.append(f"| {r['case']} | {r.get('label', '')} | skipped: {r['skipped']} "
                             "| | | | |")
                continue
            target = r.get("target")
            runs = len(r["ours"].get("runs", []))
            if runs and runs < results["repetitions"]:
                r = {**r, "label": f"{r['label']} ({runs} run{'s' if runs > 1 else ''})"}
            tdesc = r.get("target_text") or ("-" if target is None else f">= {target:.2f}x")
            lines.append(
                f"| {r['case']} | {r['label']} | {fmt_seconds(r['ours']['median_seconds'])} "
                f"({r['ours']['name']}) | {fmt_seconds(r['reference']['median_seconds'])} "
                f"({r['reference']['name']}) | {fmt_ratio(r.get('ratio'))} | {tdesc} "
                f"{verdict(r.get('ratio'), target)} | "
                f"{fmt_bytes(r['ours'].get('max_peak_rss'))} |")
        lines.append("")
        cpu = [_e2e_cpu(r) for r in others if r["case"] == "end-to-end" and not r.get("skipped")]
        if any(cpu):
            lines += [f"End to end, CPU time (median, user and system, all threads) on "
                      f"{results['machine']['cores']} cores: " + "; ".join(c for c in cpu if c)
                      + ".", ""]
    by_process = results.get("peak_rss_by_process") or {}
    if by_process:
        listed = ", ".join(f"{name} {fmt_bytes(v)}" for name, v in by_process.items())
        lines += [f"Highest peak RSS of our processes over the whole run: {listed} "
                  "(target for the services: <= 80 MB, flat with data size).", ""]
    lines += ["Tools: " + ", ".join(f"{k} {v}" for k, v in results["tools"].items() if v), ""]
    return "\n".join(lines)
