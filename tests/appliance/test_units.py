"""The unit files: `systemd-analyze verify` is clean, and each service has
the supervision and sandbox the appliance relies on (checked as data)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from container import REPO, VENV

from dicombox.cli import SERVICES

SYSTEMD = REPO / "systemd"
#: Services listening on a privileged port (104, 105, 106 in production).
LISTENERS = {"router", "mpps", "media"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values...]}}; repeated keys accumulate, as in systemd."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit, section, key):
    values = unit[section].get(key)
    assert values, f"{key}= missing in [{section}]"
    return values[-1]


def test_systemd_analyze_verify_is_clean():
    """Against the host's systemd, with /opt/dicombox/venv pointing at this
    repository's venv in a private mount namespace (verify checks ExecStart)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing (apt package systemd)")
    ns = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        ns.insert(1, "--map-root-user")
    script = (f"mount -t tmpfs tmpfs /opt && mkdir -p {VENV} && "
              f"mount --bind {REPO / '.venv'} {VENV} && "
              f"exec systemd-analyze verify {SYSTEMD}/*")
    proc = subprocess.run([*ns, "sh", "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_every_service_has_a_unit_and_the_target_wants_it():
    units = {p.stem.removeprefix("dicombox-") for p in SYSTEMD.glob("dicombox-*.service")}
    assert set(SERVICES) <= units
    for name in SERVICES:
        unit = parse_unit(SYSTEMD / f"dicombox-{name}.service")
        assert one(unit, "Unit", "PartOf") == "dicombox.target"
        assert one(unit, "Install", "WantedBy") == "dicombox.target"
    target = parse_unit(SYSTEMD / "dicombox.target")
    assert one(target, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", ["router", "mpps", "media", "panel"])
def test_service_supervision_and_sandbox(name):
    unit = parse_unit(SYSTEMD / f"dicombox-{name}.service")
    svc = unit["Service"]
    expect = {
        "Type": "notify",
        "ExecStart": f"{VENV}/bin/dicombox --config /etc/dicombox/dicombox.toml serve {name}",
        "User": "dicombox",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StandardOutput": "journal",
        "StandardError": "journal",
    }
    assert {k: one(unit, "Service", k) for k in expect} == expect
    assert one(unit, "Service", "WatchdogSec")
    assert one(unit, "Unit", "StartLimitIntervalSec")
    assert int(one(unit, "Unit", "StartLimitBurst")) > 1

    caps = "CAP_NET_BIND_SERVICE" if name in LISTENERS else ""
    assert one(unit, "Service", "CapabilityBoundingSet") == caps
    assert svc.get("AmbientCapabilities", [""])[-1] == caps

    if name == "panel":
        # No StateDirectory= (its mount dependency would keep the LEDs dark
        # without the data partition); writes only below the state directory.
        assert "StateDirectory" not in svc
        assert svc["ReadWritePaths"] == ["-/var/lib/dicombox"]
    else:
        assert one(unit, "Service", "StateDirectory") == "dicombox"

    # Hardware: only the media service (drives, sticks) and the panel (GPIO).
    devices = {
        "media": (["cdrom plugdev"], ["block-sr rw", "block-sd rw", "char-sg rw"]),
        "panel": (["gpio"], ["char-gpiochip rw"]),
    }
    if name in devices:
        groups, allow = devices[name]
        assert svc["SupplementaryGroups"] == groups
        assert svc["DeviceAllow"] == allow
        assert one(unit, "Service", "DevicePolicy") == "closed"
    else:
        assert one(unit, "Service", "PrivateDevices") == "yes"
        assert "SupplementaryGroups" not in svc and "DeviceAllow" not in svc
    if name not in ("media", "panel"):
        assert "ReadWritePaths" not in svc


def test_production_ports_need_the_capability():
    """The capability is there because production listens below 1024."""
    from dicombox.config import load
    cfg = load(REPO / "rootfs/etc/dicombox/dicombox.toml")
    assert {n: getattr(cfg, n).port for n in LISTENERS} == {
        "router": 104, "mpps": 105, "media": 106}
