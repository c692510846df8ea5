"""Media detection: udev properties to medium events, and the watcher under umockdev."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from mediabox import UMockdevBed, wait_for

from dicombox.media.udev import MediaWatcher, classify

from helpers import require

CDROM = {"DEVNAME": "/dev/sr0", "SUBSYSTEM": "block", "DEVTYPE": "disk", "ID_CDROM": "1",
         "ID_CDROM_CD_R": "1"}


def test_classify_optical_states():
    e = classify("add", CDROM)
    assert (e.kind, e.present, e.usable, e.description) == ("optical", False, False, "no disc")
    blank = {**CDROM, "ID_CDROM_MEDIA": "1", "ID_CDROM_MEDIA_STATE": "blank",
             "ID_CDROM_MEDIA_CD_R": "1"}
    e = classify("change", blank)
    assert (e.present, e.state, e.usable, e.description) == (True, "blank", True, "CD-R (blank)")
    for state in ("appendable", "complete"):
        e = classify("change", {**blank, "ID_CDROM_MEDIA_STATE": state})
        assert e.present and not e.usable and e.state == state
    e = classify("change", {**CDROM, "ID_CDROM_MEDIA": "1", "ID_CDROM_MEDIA_DVD_PLUS_R": "1"})
    assert e.state == "unknown" and e.description == "DVD+R (unknown)" and not e.usable
    e = classify("remove", blank)
    assert not e.present and not e.usable


def test_classify_usb_sticks_and_others():
    part = {"DEVNAME": "/dev/sdb1", "SUBSYSTEM": "block", "DEVTYPE": "partition",
            "ID_BUS": "usb", "ID_FS_TYPE": "vfat", "ID_VENDOR": "Acme", "ID_MODEL": "Stick",
            "ID_FS_LABEL": "PDI"}
    e = classify("add", part)
    assert (e.kind, e.present, e.usable) == ("usb", True, True)
    assert e.description == "USB stick Acme Stick 'PDI' (vfat)"
    assert classify("add", {**part, "ID_FS_TYPE": "ext4"}).usable is False
    assert classify("add", {**part, "ID_FS_TYPE": "exfat"}).usable is True
    assert classify("remove", part).present is False
    # The stick's whole disk has no file system: not a medium; a superfloppy stick is one.
    disk = {**part, "DEVNAME": "/dev/sdb", "DEVTYPE": "disk"}
    del disk["ID_FS_TYPE"]
    assert classify("add", disk) is None
    assert classify("add", {**disk, "ID_FS_USAGE": "filesystem", "ID_FS_TYPE": "vfat"}).usable
    # Internal disks and devices without a node are not media.
    assert classify("add", {**part, "ID_BUS": "ata"}) is None
    assert classify("add", {"SUBSYSTEM": "block", "ID_CDROM": "1"}) is None
    assert classify("add", {**CDROM, "SUBSYSTEM": "scsi"}) is None


def test_watcher_reports_each_change_once():
    seen = []
    w = MediaWatcher(seen.append)
    blank = {**CDROM, "ID_CDROM_MEDIA": "1", "ID_CDROM_MEDIA_STATE": "blank"}
    assert w.handle("add", CDROM) is not None
    assert w.handle("add", CDROM) is None  # repeated
    assert w.handle("change", blank) is not None
    assert w.handle("change", blank) is None
    assert w.handle("change", blank) is None
    assert w.get("/dev/sr0").usable
    assert w.handle("remove", blank) is not None
    assert w.handle("remove", blank) is None
    assert w.get("/dev/sr0") is None
    assert [(e.action, e.present) for e in seen] == [("add", False), ("change", True),
                                                     ("remove", False)]


WATCH = textwrap.dedent("""
    import json, sys, time
    from dicombox.media.udev import MediaWatcher
    def show(e):
        print(json.dumps([e.action, e.node, e.kind, e.present, e.state, e.usable]), flush=True)
    w = MediaWatcher(show, poll_timeout=0.1)
    w.start()
    print("started", flush=True)
    sys.stdin.readline()
    w.stop()
""")


@pytest.fixture
def bed():
    require("umockdev-wrapper")
    b = UMockdevBed()
    yield b
    b.close()


def test_watcher_under_umockdev(bed, tmp_path):
    """Real pyudev against a umockdev test bed: enumeration, change events, repeats, removal."""
    sr0 = bed.add_cdrom("sr0")
    env = dict(os.environ, **bed.env())
    proc = subprocess.Popen([sys.executable, "-c", WATCH], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    lines: list = []
    try:
        def read_until(pred):
            while True:
                line = proc.stdout.readline()
                assert line, "the watcher exited"
                if line.strip() == "started":
                    lines.append("started")
                else:
                    lines.append(json.loads(line))
                if pred(lines[-1]):
                    return lines[-1]

        read_until(lambda x: x == "started")
        assert lines[0] == ["add", "/dev/sr0", "optical", False, "", False]
        bed.insert_disc(sr0, "blank")
        bed.change(sr0)  # udev repeats itself: no second event
        bed.insert_disc(sr0, "complete")
        last = read_until(lambda x: isinstance(x, list) and x[4] == "complete")
        assert last == ["change", "/dev/sr0", "optical", True, "complete", False]
        stick = bed.add_usb_stick("sdb1")
        read_until(lambda x: isinstance(x, list) and x[1] == "/dev/sdb1")
        bed.remove(stick)
        read_until(lambda x: isinstance(x, list) and x[0] == "remove")
        events = [x for x in lines if isinstance(x, list)]
        assert events == [
            ["add", "/dev/sr0", "optical", False, "", False],
            ["change", "/dev/sr0", "optical", True, "blank", True],
            ["change", "/dev/sr0", "optical", True, "complete", False],
            ["add", "/dev/sdb1", "usb", True, "", True],
            ["remove", "/dev/sdb1", "usb", False, "", False],
        ]
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    wait_for(lambda: proc.poll() is not None, 5)
