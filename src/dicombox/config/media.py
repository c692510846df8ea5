"""The Portable Media Manager's section: the burner AE, media jobs and the writer.

A job collects what is sent to the burner AE (grouped by study, patient or
association), closes after ``idle_seconds`` without a new instance (or on the
button, the CLI or a request), then waits for a suitable medium in the
configured writer: an optical drive (libburn through xorriso; a ``stdio:PATH``
pseudo-drive in tests), a mounted USB stick (or a FAT image file), or a folder
that receives ISO images (the default of ``make run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .core import check_address, check_ae_title, check_ae_titles, check_networks, check_port
from .forwarding import check_name
from .schema import ConfigError, setting

#: Media application profiles a job may be written with ("auto": chosen per medium);
#: the names of ``dicombox.media.profiles.PROFILES`` (a test keeps them equal).
PROFILES = ("auto", "STD-GEN-CD", "STD-GEN-DVD-JPEG", "STD-GEN-DVD-J2K", "STD-GEN-BD-JPEG",
            "STD-GEN-USB-JPEG", "STD-GEN-USB-J2K")


def check_device(value: str) -> str | None:
    if not value.strip():
        return "must name a drive (a device path such as /dev/sr0, or stdio:PATH)"
    if value.startswith("stdio:") and len(value) == len("stdio:"):
        return "stdio: needs a path (stdio:/path/to/image)"
    return None


def check_speed(value: str) -> str | None:
    import re
    if value and not re.fullmatch(r"(max|min|none|\d+(\.\d+)?[kmcdbx]?)", value):
        return (f"{value!r} is not a burn speed (use max, min, a number of kB/s, or a "
                "factor such as 4c or 8d)")
    return None


@dataclass(frozen=True)
class OpticalSettings:
    device: str = setting("/dev/sr0", check=check_device,
                          doc="the CD/DVD drive (device path, or stdio:PATH for a pseudo-drive)")
    udev_node: str = setting(
        "", doc="device node whose udev media events describe this drive "
                "(empty: the device itself when it is a /dev path)")
    speed: str = setting("", check=check_speed,
                         doc="burn speed as xorriso takes it (empty: the drive's maximum)")
    eject: bool = setting(True, doc="eject the disc after it was written and verified")
    overwrite: bool = setting(
        False, doc="a write interrupted by a crash or a stop resumes on the same rewritable "
                   "disc (DVD+RW, BD-RE, a stdio: pseudo-drive) instead of asking for a "
                   "blank one; new jobs always need a blank disc")

    def event_node(self) -> str:
        """The node whose udev events stand for this drive ("" when none)."""
        if self.udev_node:
            return self.udev_node
        return self.device if self.device.startswith("/dev/") else ""


@dataclass(frozen=True)
class UsbSettings:
    mount_point: Path | None = setting(
        None, doc="where the box mounts a USB stick (its FAT32/exFAT file system)")
    image: Path | None = setting(
        None, doc="a FAT image file written instead of a mounted stick (tests, kiosks)")


@dataclass(frozen=True)
class FolderSettings:
    directory: Path = setting(Path("/var/lib/dicombox/media-out"),
                              doc="folder that receives one ISO image per medium")


@dataclass(frozen=True)
class RetrieveSource:
    """A Query/Retrieve SCP (a PACS) the media service may fetch studies from."""

    name: str = setting(check=check_name,
                        doc="the source's name, used by `dicombox media fetch`")
    ae_title: str = setting(check=check_ae_title, doc="the source's AE title")
    host: str = setting(check=check_address, doc="the source's address")
    port: int = setting(104, check=check_port, doc="the source's port")
    response_timeout: float = setting(
        600.0, min=1, max=86400,
        doc="seconds to wait for each C-MOVE response (the source may send no pending "
            "response while it sends a whole study)")


@dataclass(frozen=True)
class MediaSection:
    enabled: bool = setting(True, doc="run the media service")
    ae_title: str = setting("DICOMBOX_CD", check=check_ae_title, doc="the burner's AE title")
    port: int = setting(106, check=check_port, doc="TCP port of the burner's listener")
    allowed_calling_aets: tuple[str, ...] = setting((), check=check_ae_titles)
    allowed_peers: tuple[str, ...] = setting((), check=check_networks)
    max_associations: int = setting(10, min=1, max=500)
    grouping: Literal["study", "patient", "association"] = setting(
        "study", doc="what one media job holds: a study, a patient, or one association")
    idle_seconds: float = setting(
        60.0, min=0.1, max=86400,
        doc="a job closes when nothing arrived for it for this long")
    auto_burn: bool = setting(
        True, doc="start a closed job as soon as a suitable medium is present "
                  "(false: wait for the button or `dicombox media burn`)")
    writer: Literal["optical", "usb", "folder"] = setting(
        "optical", doc="where jobs are written: CD/DVD drive, USB stick, or a folder of ISOs")
    optical: OpticalSettings = field(default_factory=OpticalSettings)
    usb: UsbSettings = field(default_factory=UsbSettings)
    folder: FolderSettings = field(default_factory=FolderSettings)
    capacity_mb: int = setting(
        0, min=0, doc="medium capacity used to split jobs over several media "
                      "(0: what the medium reports; folder: no splitting)")
    profile: Literal[PROFILES] = setting(  # type: ignore[valid-type]
        "auto", doc="media application profile (auto: General Purpose CD-R for CDs, the "
                    "BD/DVD/USB profiles with JPEG otherwise)")
    verify: bool = setting(True, doc="read every written medium back and compare it")
    max_attempts: int = setting(
        3, min=1, max=50, doc="media tried for one volume before its job fails for good")
    retry_on_new_medium: bool = setting(
        True, doc="a job that failed because of its medium starts again when a fresh "
                  "medium is inserted (up to max_attempts)")
    keep_done_hours: float = setting(
        24.0, min=0, max=24 * 365,
        doc="hours the instances of a finished job are kept (0: removed at once)")
    udev: bool = setting(True, doc="watch drives, discs and USB sticks through udev")
    probe_seconds: float = setting(
        5.0, min=0.2, max=3600,
        doc="how often a waiting job probes the writer when udev reports nothing")
    sources: tuple[RetrieveSource, ...] = setting(
        (), doc="PACS the media service may fetch studies from (C-MOVE to its own AE "
                "title), with `dicombox media fetch`")

    def validate(self, key: str) -> None:
        names = set()
        for i, source in enumerate(self.sources):
            if source.name in names:
                raise ConfigError(f"{key}.sources[{i}].name",
                                  f"duplicate source name {source.name!r}")
            names.add(source.name)
            if self.allowed_calling_aets and source.ae_title not in self.allowed_calling_aets:
                raise ConfigError(
                    f"{key}.sources[{i}].ae_title",
                    f"{source.ae_title!r} is not in {key}.allowed_calling_aets: the "
                    "instances it sends back would be refused")

    def source(self, name: str) -> RetrieveSource | None:
        return next((s for s in self.sources if s.name == name), None)


def validate_config(config) -> None:
    """Checks across sections."""
    media = config.media
    if not media.enabled:
        return
    if media.writer == "usb":
        usb = media.usb
        if usb.mount_point is None and usb.image is None:
            raise ConfigError("media.usb.mount_point",
                              "required when media.writer is 'usb' (or set media.usb.image)")
        if usb.mount_point is not None and usb.image is not None:
            raise ConfigError("media.usb.image", "set either mount_point or image, not both")
    if media.writer == "folder":
        media_root = (config.box.state_dir / "media").resolve()
        out = media.folder.directory.resolve()
        for sub in ("spool", "tmp", "jobs"):
            if out == media_root / sub or (media_root / sub) in out.parents:
                raise ConfigError("media.folder.directory",
                                  f"{out} is inside the media service's own {sub}/ folder")
