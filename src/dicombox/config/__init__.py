"""The box's configuration: one TOML file validated into frozen objects.

``load(path)`` returns a :class:`Config` or raises :class:`ConfigError`
whose message names the key and the problem.  The configuration object is
passed to every service's constructor; nothing reads it from a global.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import commit, forwarding, media, mpps, panel
from .commit import CommitmentSection, RemoteAE
from .core import BoxSection, NetworkSection, StorageSection
from .forwarding import CleanupSection, Destination, ForwardingSection, Rule
from .media import MediaSection
from .mpps import MppsSection
from .panel import PanelSection
from .router import RouterSection
from .schema import ConfigError, build, reference

__all__ = ["Config", "ConfigError", "load", "load_default", "DEFAULT_PATH", "EMBEDDED",
           "reference"]

DEFAULT_PATH = Path("/etc/dicombox/dicombox.toml")
#: The name that selects the configuration embedded in the package.
EMBEDDED = "embedded"


@dataclass(frozen=True)
class Config:
    box: BoxSection = field(default_factory=BoxSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    storage: StorageSection = field(default_factory=StorageSection)
    router: RouterSection = field(default_factory=RouterSection)
    mpps: MppsSection = field(default_factory=MppsSection)
    media: MediaSection = field(default_factory=MediaSection)
    panel: PanelSection = field(default_factory=PanelSection)
    destinations: tuple[Destination, ...] = ()
    rules: tuple[Rule, ...] = ()
    forwarding: ForwardingSection = field(default_factory=ForwardingSection)
    cleanup: CleanupSection = field(default_factory=CleanupSection)
    commitment: CommitmentSection = field(default_factory=CommitmentSection)
    remote_aes: tuple[RemoteAE, ...] = ()
    #: Where this configuration was read from (a path or "embedded").
    source: str = field(default=EMBEDDED, compare=False)

    def validate(self, key: str) -> None:
        listeners = [("router", self.router)]
        if self.mpps.enabled:
            listeners.append(("mpps", self.mpps))
        if self.media.enabled:
            listeners.append(("media", self.media))
        titles: dict[str, str] = {}
        for name, section in listeners:
            if section.ae_title in titles:
                raise ConfigError(f"{name}.ae_title", f"AE title {section.ae_title!r} is "
                                  f"already used by {titles[section.ae_title]}")
            titles[section.ae_title] = name
        seen: dict[int, str] = {}
        for name, section in listeners:
            if section.port in seen:
                raise ConfigError(f"{name}.port",
                                  f"port {section.port} is already used by {seen[section.port]}")
            seen[section.port] = name
        _check_state_dir(self.box.state_dir)
        for module in (forwarding, commit, mpps, media, panel):
            module.validate_config(self)


def _check_state_dir(path: Path) -> None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError("box.state_dir", f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError("box.state_dir", f"{probe} is not writable by this user")


def parse(text: str, source: str, base_dir: Path | None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", source) from None
    try:
        config = build(Config, data, "", base_dir)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.problem, source) from None
    return _with_source(config, source)


def _with_source(config: Config, source: str) -> Config:
    object.__setattr__(config, "source", source)
    return config


def embedded_text() -> str:
    return resources.files("dicombox").joinpath("default.toml").read_text("utf-8")


def load_default() -> Config:
    """The embedded default configuration; relative paths are under the cwd."""
    return parse(embedded_text(), EMBEDDED, Path.cwd())


def load(path: str | os.PathLike | None = None) -> Config:
    """Load the configuration.

    ``path`` may be a file, :data:`EMBEDDED`, or ``None``: then
    ``$DICOMBOX_CONFIG``, else :data:`DEFAULT_PATH` if it exists, else the
    embedded default.  Relative paths in a file are relative to its folder.
    """
    if path is None:
        path = os.environ.get("DICOMBOX_CONFIG") or (
            DEFAULT_PATH if DEFAULT_PATH.exists() else EMBEDDED)
    if str(path) == EMBEDDED:
        return load_default()
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"configuration file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read configuration file {p}: {exc}") from None
    return parse(text, str(p), p.resolve().parent)
