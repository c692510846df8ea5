"""The units under a real systemd: all services reach active, and a frozen
service is restarted by its watchdog while the others keep running."""

from __future__ import annotations

import json

import pytest
from container import UNITS, VENV, seconds

pytestmark = pytest.mark.slow

#: The frozen service must be restarted within its WatchdogSec plus this.
RESTART_GRACE = 40


def test_units_boot_and_watchdog_restarts_a_frozen_service(container):
    states = container.wait(
        lambda: (lambda s: s if all(v["ActiveState"] == "active" for v in s.values())
                 else None)({u: container.show(u) for u in UNITS}), timeout=60)
    assert states, "not every service became active:\n" + container.diagnostics()
    for unit, state in states.items():
        assert state["User"] == "dicombox", unit
        assert seconds(state["WatchdogUSec"]) > 0, unit

    # The sandbox is real: no new privileges, a seccomp filter, and of all
    # capabilities only CAP_NET_BIND_SERVICE (bit 10), for the listeners;
    # device groups only for the media service (cdrom, plugdev) and the panel.
    groups = {name: container.run("getent", "group", name).stdout.split(":")[2]
              for name in ("cdrom", "plugdev", "gpio", "dicombox")}
    for unit, state in states.items():
        status = dict(line.split(":", 1) for line in container.run(
            "cat", f"/proc/{state['MainPID']}/status").stdout.splitlines() if ":" in line)
        status = {k: v.strip() for k, v in status.items()}
        assert status["NoNewPrivs"] == "1", unit
        assert status["Seccomp"] == "2", unit
        caps = 0 if unit == "dicombox-panel" else 1 << 10
        assert int(status["CapEff"], 16) == caps, (unit, status["CapEff"])
        assert int(status["CapBnd"], 16) == caps, (unit, status["CapBnd"])
        expected = {"dicombox-media": {"cdrom", "plugdev"},
                    "dicombox-panel": {"gpio"}}.get(unit, set())
        assert set(status["Groups"].split()) == {groups[g] for g in expected | {"dicombox"}}, (
            unit, status["Groups"])

    # Each DICOM listener answers on its privileged port, run as the
    # unprivileged service user (the container has only loopback).
    for port, aet in ((104, "DICOMBOX"), (105, "DICOMBOX_PPS"), (106, "DICOMBOX_CD")):
        echo = container.run("echoscu", "-aec", aet, "127.0.0.1", str(port),
                             namespaces="-n", check=False)
        assert echo.returncode == 0, f"C-ECHO to {aet}:{port}: {echo.stderr}"

    # The panel, sandboxed as it is, reads the other services' state: every
    # service up, nothing going on (what it shows, read through the CLI).
    def leds():
        out = container.run(f"{VENV}/bin/dicombox", "--config", "/etc/dicombox/dicombox.toml",
                            "status", "--json", check=False).stdout
        try:
            return json.loads(out)["services"]["panel"]["state"]["leds"]
        except (ValueError, KeyError):
            return None

    quiet = {"power": "on", "network": "off", "media": "off", "error": "off"}
    shown = container.wait(lambda: (lambda v: v if v == quiet else None)(leds()), timeout=30)
    assert shown == quiet, f"the panel shows {leds()}:\n" + container.diagnostics()

    frozen = "dicombox-router"
    before = states[frozen]
    container.run("systemctl", "kill", "--kill-whom=main", "-s", "SIGSTOP",
                  f"{frozen}.service")
    timeout = seconds(before["WatchdogUSec"]) + RESTART_GRACE

    def restarted():
        now = container.show(frozen)
        return now if (now["ActiveState"] == "active" and now["MainPID"] != before["MainPID"]
                       and int(now["NRestarts"]) > int(before["NRestarts"])) else None

    after = container.wait(restarted, timeout=timeout, interval=0.5)
    assert after, "the watchdog did not restart the frozen router:\n" + container.diagnostics()
    journal = container.run("journalctl", "--no-pager", "-u", f"{frozen}.service").stdout
    assert "Watchdog timeout" in journal

    # The siblings were not touched.
    for unit in UNITS:
        if unit != frozen:
            now = container.show(unit)
            assert (now["ActiveState"], now["MainPID"], now["NRestarts"]) == (
                "active", states[unit]["MainPID"], states[unit]["NRestarts"]), unit
    echo = container.run("echoscu", "-aec", "DICOMBOX", "127.0.0.1", "104", namespaces="-n",
                         check=False)
    assert echo.returncode == 0, echo.stderr
