"""rootfs/: the production configuration, the service account, the state
directory, the udev rules, journald and overlayroot settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from container import REPO

ROOTFS = REPO / "rootfs"


def test_production_configuration():
    from dicombox.config import load
    path = ROOTFS / "etc/dicombox/dicombox.toml"
    proc = subprocess.run([str(REPO / ".venv/bin/dicombox"), "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = load(path)
    assert cfg.box.state_dir == Path("/var/lib/dicombox")
    assert cfg.box.listen_address == "0.0.0.0"
    assert (cfg.router.port, cfg.mpps.port, cfg.media.port) == (104, 105, 106)
    assert (cfg.media.writer, cfg.media.optical.device) == ("optical", "/dev/sr0")
    assert cfg.panel.gpio == "required"


@pytest.fixture
def tree(tmp_path):
    """A root with Debian's base accounts and ours, made by systemd-sysusers."""
    if shutil.which("systemd-sysusers") is None:
        pytest.fail("systemd-sysusers missing (apt package systemd)")
    conf = tmp_path / "usr/lib/sysusers.d"
    conf.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    for name in ("basic.conf", "systemd-journal.conf"):
        shutil.copy(Path("/usr/lib/sysusers.d") / name, conf)
    shutil.copy(ROOTFS / "usr/lib/sysusers.d/dicombox.conf", conf)
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], check=True,
                   capture_output=True, timeout=60)
    return tmp_path


def accounts(tree, name):
    return {line.split(":")[0]: line.split(":") for line in
            (tree / "etc" / name).read_text().splitlines()}


def test_static_service_account_without_device_groups(tree):
    users, groups = accounts(tree, "passwd"), accounts(tree, "group")
    assert users["dicombox"][2:4] == ["901", "901"]
    assert users["dicombox"][6] == "/usr/sbin/nologin"
    assert groups["dicombox"][2] == "901"
    assert "gpio" in groups
    # Device access comes from the units' SupplementaryGroups=, never from
    # the account itself (which every service shares).
    members = {g for g, fields in groups.items() if "dicombox" in fields[3].split(",")}
    assert members == set()


def test_tmpfiles_state_and_journal_directories(tree):
    shutil.copytree(ROOTFS / "usr/lib/tmpfiles.d", tree / "usr/lib/tmpfiles.d")
    subprocess.run(["systemd-tmpfiles", f"--root={tree}", "--create",
                    "--prefix=/var/lib/dicombox"], check=True, capture_output=True, timeout=60)
    groups = accounts(tree, "group")
    state = (tree / "var/lib/dicombox").stat()
    journal = (tree / "var/lib/dicombox/journal").stat()
    assert (state.st_uid, state.st_gid, oct(state.st_mode & 0o7777)) == (901, 901, "0o750")
    assert (journal.st_uid, journal.st_gid, oct(journal.st_mode & 0o7777)) == (
        0, int(groups["systemd-journal"][2]), "0o2755")


def test_journal_is_persistent_and_capped():
    text = (ROOTFS / "usr/lib/systemd/journald.conf.d/dicombox.conf").read_text()
    settings = dict(re.findall(r"^(\w+)=(\S+)$", text, re.M))
    assert settings["Storage"] == "persistent"
    for key in ("SystemMaxUse", "SystemKeepFree", "RuntimeMaxUse", "SystemMaxFileSize"):
        assert re.fullmatch(r"\d+[KMG]", settings[key]), key
    mount = (REPO / "systemd/var-log-journal.mount").read_text()
    assert "What=/var/lib/dicombox/journal" in mount
    assert "Where=/var/log/journal" in mount


def test_overlayroot_keeps_the_data_partition_out_of_ram():
    text = (ROOTFS / "etc/overlayroot.local.conf").read_text()
    assert re.search(r'^overlayroot="tmpfs:recurse=0"$', text, re.M)


RULE_TOKEN = re.compile(r'\s*([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,|$)')


def udev_rules(path: Path) -> list[list[tuple[str, str, str]]]:
    """Each rule as (key, operator, value) triples; fails on a malformed line."""
    rules, pending = [], ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith("#"):
            continue
        pos, rule = 0, []
        while pos < len(line):
            m = RULE_TOKEN.match(line, pos)
            assert m, f"{path.name}: cannot parse {line[pos:]!r}"
            rule.append(m.groups()[:3])
            pos = m.end()
        rules.append(rule)
    return rules


def test_udev_rules_hand_drives_and_sticks_to_the_media_groups():
    rules = udev_rules(ROOTFS / "usr/lib/udev/rules.d/70-dicombox-media.rules")
    text = [dict(((k, op), v) for k, op, v in r) for r in rules]
    optical = [r for r in text if r.get(("KERNEL", "==")) == "sr[0-9]*"]
    assert optical and optical[0][("GROUP", "=")] == "cdrom"
    assert optical[0][("MODE", "=")] == "0660"
    sticks = [r for r in text if r.get(("ENV{ID_BUS}", "==")) == "usb"]
    assert len(sticks) == 2
    assert all(r[("GROUP", "=")] == "plugdev" and r[("TAG", "+=")] == "dicombox-media"
               for r in sticks)
    # The box's own partitions skip the stick rules, by the image's labels.
    labels = next(r[("ENV{ID_FS_LABEL}", "==")] for r in text
                  if ("ENV{ID_FS_LABEL}", "==") in r)
    config = (REPO / "image-build/config.sh")
    if config.exists():
        for var in ("BOOT_LABEL", "ROOT_LABEL", "DATA_LABEL"):
            label = re.search(rf"{var}=\$\{{{var}:-([^}}]+)\}}", config.read_text()).group(1)
            assert label in labels.split("|"), var
    gpio = udev_rules(ROOTFS / "usr/lib/udev/rules.d/70-dicombox-gpio.rules")
    assert ("GROUP", "=", "gpio") in gpio[0]
