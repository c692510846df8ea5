"""Drives, discs and USB sticks as udev reports them (through pyudev).

udev describes an optical drive as a block ``disk`` with ``ID_CDROM=1``; the
disc in it, after each ``change`` event, with ``ID_CDROM_MEDIA=1`` and
``ID_CDROM_MEDIA_STATE`` (``blank``, ``appendable`` or ``complete``) plus one
``ID_CDROM_MEDIA_<TYPE>=1``.  A USB stick is a block device on ``ID_BUS=usb``
whose partition (or whole disk, for sticks without a partition table)
carries a file system (``ID_FS_TYPE``).

:func:`classify` turns one device's properties into a :class:`MediumEvent`
(pure, testable with plain dictionaries).  :class:`MediaWatcher` keeps the
latest event per device node, from an enumeration at start and from the
netlink monitor afterwards, and calls ``on_change`` only when what a node
says actually changed: udev repeats events (and umockdev's ``add_device``
already emits "add"), so handlers see each real change once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

LOGGER = logging.getLogger("dicombox.media.udev")

#: File systems a stick may carry for the box to write on it.
USB_FILESYSTEMS = ("vfat", "exfat")

#: udev's ID_CDROM_MEDIA_<TYPE> suffixes, as shown to the operator.
_OPTICAL_TYPES = (
    ("CD_R", "CD-R"), ("CD_RW", "CD-RW"), ("CD", "CD-ROM"),
    ("DVD_PLUS_R_DL", "DVD+R DL"), ("DVD_PLUS_R", "DVD+R"), ("DVD_PLUS_RW", "DVD+RW"),
    ("DVD_R_DL", "DVD-R DL"), ("DVD_R", "DVD-R"), ("DVD_RW", "DVD-RW"),
    ("DVD_RAM", "DVD-RAM"), ("DVD", "DVD-ROM"),
    ("BD_R", "BD-R"), ("BD_RE", "BD-RE"), ("BD", "BD-ROM"),
)


@dataclass(frozen=True)
class MediumEvent:
    """What one device node says about a medium."""

    node: str
    kind: str  # "optical" | "usb"
    #: A disc is in the drive / the stick is plugged in.
    present: bool
    #: Optical: blank, appendable, complete, or unknown ("" when no disc).
    state: str = ""
    #: The box could write on it now (a blank disc; a stick with FAT/exFAT).
    usable: bool = False
    description: str = ""
    action: str = field(default="", compare=False)

    def key(self) -> tuple:
        return (self.kind, self.present, self.state, self.usable, self.description)


def classify(action: str, props: Mapping[str, str]) -> MediumEvent | None:
    """The medium event a block device's udev properties describe, if any."""
    node = props.get("DEVNAME", "")
    if not node or props.get("SUBSYSTEM", "block") != "block":
        return None
    removed = action == "remove"
    if props.get("ID_CDROM") == "1":
        present = not removed and props.get("ID_CDROM_MEDIA") == "1"
        state = ""
        kind = ""
        if present:
            state = props.get("ID_CDROM_MEDIA_STATE", "") or "unknown"
            kind = next((name for suffix, name in _OPTICAL_TYPES
                         if props.get(f"ID_CDROM_MEDIA_{suffix}") == "1"), "disc")
        description = f"{kind} ({state})" if present else "no disc"
        return MediumEvent(node, "optical", present, state, present and state == "blank",
                           description, action)
    if props.get("ID_BUS") != "usb":
        return None
    devtype = props.get("DEVTYPE", "")
    fs_type = props.get("ID_FS_TYPE", "")
    if devtype == "disk" and props.get("ID_FS_USAGE") != "filesystem":
        return None  # the stick itself; its partitions carry the file systems
    if devtype not in ("disk", "partition"):
        return None
    name = " ".join(p for p in (props.get("ID_VENDOR", ""), props.get("ID_MODEL", "")) if p)
    label = props.get("ID_FS_LABEL", "")
    description = "USB stick" + (f" {name}" if name else "") + (f" '{label}'" if label else "")
    description += f" ({fs_type or 'no file system'})"
    return MediumEvent(node, "usb", not removed, "", not removed and fs_type in USB_FILESYSTEMS,
                       description, action)


class UdevUnavailable(RuntimeError):
    """pyudev or libudev cannot be used on this system."""


class MediaWatcher:
    """The latest :class:`MediumEvent` of every drive and stick, kept current.

    ``on_change(event)`` runs in the watcher's thread for every real change
    (including the initial enumeration); it must be quick.
    """

    def __init__(self, on_change: Callable[[MediumEvent], None], context=None,
                 poll_timeout: float = 0.5):
        self.on_change = on_change
        self._context = context
        self._poll_timeout = poll_timeout
        self._lock = threading.Lock()
        self._nodes: dict[str, MediumEvent] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor = None
        self.failed: BaseException | None = None

    def start(self) -> None:
        try:
            import pyudev
            context = self._context or pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context)
            monitor.filter_by("block")
            monitor.start()
        except (ImportError, OSError) as exc:
            raise UdevUnavailable(f"udev is not available: {exc}") from exc
        self._monitor = monitor
        # Listen first, then enumerate: an event in between is seen twice, never lost.
        for device in context.list_devices(subsystem="block"):
            self.handle("add", dict(device.properties))
        self._thread = threading.Thread(target=self._run, name="media-udev", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                device = self._monitor.poll(timeout=self._poll_timeout)
                if device is not None:
                    self.handle(device.action or "change", dict(device.properties))
        except BaseException as exc:  # noqa: BLE001 - last-resort handler, makes us unhealthy
            self.failed = exc
            LOGGER.exception("udev watcher died")

    def handle(self, action: str, props: Mapping[str, str]) -> MediumEvent | None:
        """Take one event; return it when it changed what its node says."""
        event = classify(action, props)
        if event is None:
            return None
        with self._lock:
            previous = self._nodes.get(event.node)
            if action == "remove":
                if previous is None:
                    return None
                del self._nodes[event.node]
            else:
                if previous is not None and previous.key() == event.key():
                    return None
                self._nodes[event.node] = event
        LOGGER.info("%s %s: %s", event.node, action, event.description)
        self.on_change(event)
        return event

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stopping.is_set()

    def get(self, node: str) -> MediumEvent | None:
        with self._lock:
            return self._nodes.get(node)

    def present(self, kind: str) -> list[MediumEvent]:
        with self._lock:
            return [e for e in self._nodes.values() if e.kind == kind and e.present]

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
