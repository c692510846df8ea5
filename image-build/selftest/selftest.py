"""Self-test of a dicombox test image, run at boot by dicombox-selftest.service.

The host boots the image twice (``dicombox.selftest=1``, then ``=2`` on the
kernel command line) and reads the verdict this script writes to a small
second disk (serial ``result``): ``SELFTEST rc=N`` on the first line, then
one line per check.  It never decides alone whether the box is healthy: it
asks systemd, the kernel's mount table and the router itself.

Boot 1: every service is active; the root is an overlay on a read-only
ext4 and the data partition is mounted at the services' state directory;
a file is written to ``/``; an instance is stored through the router (a
real C-STORE) and found in the spool; one service is frozen with SIGSTOP
and its watchdog must restart it while its siblings keep running.

Boot 2: every service is active again; the file written to ``/`` is gone
(the root's writes lived in RAM); the stored instance is still in the spool
and its file on the data partition.

The unit powers the machine off when this script ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

SERVICES = ["dicombox-router", "dicombox-mpps", "dicombox-media", "dicombox-panel"]
#: the service the watchdog check freezes
FROZEN = "dicombox-router"
RESULT_DISK = Path("/dev/disk/by-id/virtio-result")
VOLATILE = Path("/selftest-written-to-root")
DATA_MOUNT = "/var/lib/dicombox"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"           # Secondary Capture Image Storage
STUDY_UID = "1.2.826.0.1.3680043.10.1433.7.1"
SOP_UID = "1.2.826.0.1.3680043.10.1433.7.1.1.1"
START_TIMEOUT = 300   # s for every service to become active (emulated CPU)
RESTART_GRACE = 240   # s beyond WatchdogSec for the restart to complete


class Report:
    """The verdict: a list of checks, each passed or failed, with details."""

    def __init__(self, phase: int):
        self.phase = phase
        self.lines: list[str] = []
        self.checks = 0
        self.failures = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        self.lines.append(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""))
        self.checks += 1
        if not ok:
            self.failures += 1
        print(self.lines[-1], flush=True)
        return ok

    def note(self, text: str) -> None:
        self.lines.append(f"     {text}")

    def text(self) -> str:
        rc = 1 if self.failures else 0
        head = [f"SELFTEST rc={rc}",
                f"phase={self.phase} checks={self.checks} failed={self.failures}"]
        return "\n".join([*head, *self.lines, ""])


def run(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return proc.stdout.strip()


def unit_state(unit: str) -> dict[str, str]:
    out = run("systemctl", "show", "-p", "ActiveState,SubState,MainPID,NRestarts,"
              "WatchdogUSec,LoadState", f"{unit}.service")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_active(units: list[str], timeout: float) -> dict[str, dict[str, str]]:
    """Until every unit is active, or the boot has settled without them
    (no jobs queued, none of them activating or restarting), or time is up."""
    deadline = time.monotonic() + timeout
    settled = 0
    while True:
        states = {u: unit_state(u) for u in units}
        if all(s.get("ActiveState") == "active" for s in states.values()):
            return states
        idle = not run("systemctl", "list-jobs", "--no-legend", "--no-pager")
        starting = any(s.get("ActiveState") in ("activating", "reloading")
                       for s in states.values())
        settled = settled + 1 if idle and not starting else 0
        if settled >= 3 or time.monotonic() > deadline:
            return states
        time.sleep(2)


def describe(state: dict[str, str]) -> str:
    return (f"{state.get('LoadState')}/{state.get('ActiveState')}/{state.get('SubState')} "
            f"pid={state.get('MainPID')} restarts={state.get('NRestarts')}")


def check_services(report: Report) -> dict[str, dict[str, str]]:
    states = wait_active(SERVICES, START_TIMEOUT)
    for unit, state in states.items():
        report.check(state.get("ActiveState") == "active", f"{unit} active", describe(state))
    return states


def check_mounts(report: Report) -> None:
    root = run("findmnt", "-n", "-o", "FSTYPE", "--mountpoint", "/")
    report.check(root == "overlay", "root is an overlay", root)
    lower = run("findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--mountpoint", "/media/root-ro")
    fstype, options = (lower.split() + ["", ""])[:2]
    report.check(fstype == "ext4" and "ro" in options.split(","),
                 "lower root is ext4 mounted read-only", lower)
    data = run("findmnt", "-n", "-o", "FSTYPE,LABEL,OPTIONS", "--mountpoint", DATA_MOUNT)
    fstype, label, options = (data.split() + ["", "", ""])[:3]
    report.check(fstype == "ext4" and label == "dicombox-data" and "rw" in options.split(","),
                 f"data partition mounted read-write at {DATA_MOUNT}", data)
    check_data_grown(report)


def check_data_grown(report: Report) -> None:
    """The data partition and its filesystem fill the disk (the test disk is
    larger than the image, as an SD card is)."""
    source = Path(run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", DATA_MOUNT))
    if not source.name:
        report.check(False, "data partition grown to the end of the disk", "not mounted")
        return
    part = (Path("/sys/class/block") / source.resolve().name).resolve()
    start, size = (int((part / f).read_text()) for f in ("start", "size"))
    disk = int((part.parent / "size").read_text())
    fs = os.statvfs(DATA_MOUNT)
    fs_mib, part_mib = fs.f_blocks * fs.f_frsize >> 20, size >> 11
    report.check(start + size >= disk - 2 * 2048 and fs_mib >= part_mib * 9 // 10,
                 "data partition grown to the end of the disk",
                 f"partition ends at {(start + size) >> 11} of {disk >> 11} MiB, "
                 f"filesystem {fs_mib} MiB")


def router_address(cfg) -> tuple[str, int, str]:
    address = cfg.box.listen_address
    if address in ("0.0.0.0", ""):
        address = "127.0.0.1"
    elif address == "::":
        address = "::1"
    return address, cfg.router.port, cfg.router.ae_title


def store_instance(report: Report) -> None:
    """Send one small instance to the router with a real C-STORE."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian
    from pynetdicom import AE

    from dicombox import config

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = STUDY_UID + ".1"
    ds.PatientName = "SELFTEST^IMAGE"
    ds.PatientID = "SELFTEST"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))

    host, port, called = router_address(config.load())
    ae = AE(ae_title="SELFTEST")
    ae.add_requested_context(SOP_CLASS, ImplicitVRLittleEndian)
    assoc = ae.associate(host, port, ae_title=called)
    if not report.check(assoc.is_established, f"association with {called} at {host}:{port}"):
        return
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    report.check(code == 0, "C-STORE to the router", f"status {code!r}")


def check_spool(report: Report, when: str) -> None:
    out = run("/opt/dicombox/venv/bin/dicombox", "spool", "show", SOP_UID, "--json")
    try:
        info = json.loads(out)
    except ValueError:
        report.check(False, f"instance in the spool ({when})", out or "not found")
        return
    path = Path(info.get("file", ""))
    report.check(path.is_file() and str(path).startswith(DATA_MOUNT + "/"),
                 f"instance in the spool ({when})", str(path))


def timespan_usec(text: str) -> int:
    """systemd's time span as `systemctl show` prints it ("20s", "1min 30s")."""
    units = {"us": 1, "ms": 1000, "s": 10**6, "min": 60 * 10**6, "h": 3600 * 10**6}
    total = 0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(us|ms|min|s|h)", text):
        total += int(float(number) * units[unit])
    return total


def check_watchdog(report: Report, before: dict[str, dict[str, str]]) -> None:
    """Freeze one service; systemd's watchdog must restart it, alone."""
    frozen = before[FROZEN]
    watchdog_usec = timespan_usec(frozen.get("WatchdogUSec", ""))
    if not report.check(watchdog_usec > 0, f"{FROZEN} has a watchdog",
                        f"WatchdogUSec={watchdog_usec}"):
        return
    run("systemctl", "kill", "--kill-whom=main", "-s", "SIGSTOP", f"{FROZEN}.service")
    deadline = time.monotonic() + watchdog_usec / 1e6 + RESTART_GRACE
    state = unit_state(FROZEN)
    while time.monotonic() < deadline:
        state = unit_state(FROZEN)
        if (state.get("ActiveState") == "active"
                and int(state.get("NRestarts", "0")) > int(frozen.get("NRestarts", "0"))
                and state.get("MainPID") != frozen.get("MainPID")):
            break
        time.sleep(2)
    report.check(state.get("MainPID") != frozen.get("MainPID")
                 and state.get("ActiveState") == "active",
                 f"watchdog restarted the frozen {FROZEN}",
                 f"before: {describe(frozen)}; after: {describe(state)}")
    for unit in SERVICES:
        if unit == FROZEN:
            continue
        now = unit_state(unit)
        report.check(now.get("ActiveState") == "active"
                     and now.get("MainPID") == before[unit].get("MainPID"),
                     f"{unit} kept running", describe(now))


def write_to_root(report: Report) -> None:
    VOLATILE.write_text("written during the first boot\n")
    os.sync()
    report.check(VOLATILE.exists(), f"wrote {VOLATILE}")


def root_write_gone(report: Report) -> None:
    report.check(not VOLATILE.exists(), f"{VOLATILE} from the first boot is gone")


def phase_one(report: Report) -> None:
    states = check_services(report)
    steps = [
        check_mounts,
        write_to_root,
        store_instance,
        lambda r: check_spool(r, "after C-STORE"),
    ]
    if all(s.get("ActiveState") == "active" for s in states.values()):
        steps.append(lambda r: check_watchdog(r, states))
    steps.append(lambda r: check_spool(r, "after the watchdog restart"))
    run_steps(report, steps)


def phase_two(report: Report) -> None:
    check_services(report)
    run_steps(report, [check_mounts, root_write_gone, lambda r: check_spool(r, "after a reboot")])


def run_steps(report: Report, steps) -> None:
    """Each step on its own: one that crashes is a failed check, and the
    others still run."""
    for step in steps:
        try:
            step(report)
        except Exception:   # last resort: report it and go on to the next check
            report.check(False, "check crashed", traceback.format_exc().replace("\n", " | "))


def diagnostics(report: Report) -> None:
    report.note("--- systemctl --failed")
    report.lines += ["     " + line for line in run("systemctl", "--failed", "--no-pager",
                                                       "--plain", "--no-legend").splitlines()]
    report.note("--- journal of the dicombox units (last 80 lines)")
    journal = run("journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", "80",
                  *[f"-u{u}.service" for u in SERVICES])
    report.lines += ["     " + line for line in journal.splitlines()]


def result_device() -> Path:
    """The result disk: by its serial, or found through sysfs if udev is late."""
    for _ in range(30):
        if RESULT_DISK.exists():
            return RESULT_DISK
        for serial in Path("/sys/block").glob("vd*/serial"):
            if serial.read_text().strip() == "result":
                return Path("/dev") / serial.parent.name
        time.sleep(1)
    raise FileNotFoundError("no disk with serial 'result'")


def write_verdict(text: str) -> None:
    data = text.encode()[: 1024 * 1024 - 4096]
    data += b"\0" * (-len(data) % 512)
    fd = os.open(result_device(), os.O_WRONLY | os.O_SYNC)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> int:
    phase = 1
    for arg in Path("/proc/cmdline").read_text().split():
        if arg.startswith("dicombox.selftest="):
            phase = int(arg.split("=", 1)[1])
    report = Report(phase)
    run_steps(report, [phase_one if phase == 1 else phase_two])
    if report.failures:
        diagnostics(report)
    text = report.text()
    print(text, flush=True)
    write_verdict(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
