"""The ``dicombox`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

from . import config as config_mod
from .config import ConfigError

#: service name -> "module:Class"; `serve all` runs those enabled in the config.
SERVICES = {
    "router": "dicombox.router.service:RouterService",
    "media": "dicombox.media.service:MediaService",
    "mpps": "dicombox.mpps.service:MppsService",
    "panel": "dicombox.panel.service:PanelService",
}

#: Modules that add sub-commands: each has ``register(subparsers)``.
COMMAND_MODULES = [
    "dicombox.commands.spool",
    "dicombox.commands.status",
    "dicombox.commands.commit",
    "dicombox.commands.media",
    "dicombox.commands.mpps",
    "dicombox.commands.queue",
    "dicombox.commands.route",
]


class CliError(Exception):
    """An error to print as one line, with an exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class OneLineLibraryErrors(logging.Filter):
    """Library errors caused by what a peer sent (undecodable PDUs, bad values)
    are logged as one line: the peer's garbage is not the box's failure and
    must not fill the journal with tracebacks.  The box's own loggers keep
    their tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("pynetdicom", "pydicom")):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLineLibraryErrors())
    for name in ("pynetdicom", "pydicom"):
        logging.getLogger(name).setLevel(logging.INFO if level == "debug" else logging.WARNING)
    import warnings
    warnings.filterwarnings("ignore", module="pydicom")


def load_config(path) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        raise CliError(f"configuration error: {exc}", 2) from None


def service_class(name: str):
    module, _, cls = SERVICES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def enabled_services(cfg: config_mod.Config) -> list[str]:
    names = []
    for name in SERVICES:
        section = getattr(cfg, name, None)
        if section is not None and not getattr(section, "enabled", True):
            continue
        names.append(name)
    return names


def cmd_serve(args) -> int:
    cfg = load_config(args.config)
    setup_logging(args.log_level or cfg.box.log_level)
    if args.service == "all":
        return serve_all(args, cfg)
    if args.service not in SERVICES:
        raise CliError(f"unknown service {args.service!r} (known: {', '.join(SERVICES)})", 2)
    from .lifecycle import run
    kwargs = {"port": args.port} if args.port is not None else {}
    service = service_class(args.service)(cfg, **kwargs)
    return run(service)


def serve_all(args, cfg) -> int:
    """Run every enabled service as a child process; restart any that dies."""
    log = logging.getLogger("dicombox.supervisor")
    names = enabled_services(cfg)
    conf = ["--config", str(args.config)] if args.config else []
    base = [sys.executable, "-m", "dicombox", *conf, "serve"]
    children: dict[str, subprocess.Popen] = {}
    restarts: dict[str, list[float]] = {n: [] for n in names}
    stopping = {"flag": False}

    def on_signal(signum, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def spawn(name):
        children[name] = subprocess.Popen([*base, name])
        log.info("started %s (pid %d)", name, children[name].pid)

    for name in names:
        spawn(name)
    code = 0
    while not stopping["flag"]:
        time.sleep(0.2)
        for name, proc in list(children.items()):
            rc = proc.poll()
            if rc is None or stopping["flag"]:
                continue
            now = time.monotonic()
            recent = [t for t in restarts[name] if now - t < 60] + [now]
            restarts[name] = recent
            if len(recent) > 5:
                log.error("%s exited %d five times within a minute; giving up", name, rc)
                stopping["flag"] = True
                code = 1
                break
            log.warning("%s exited with %d; restarting", name, rc)
            spawn(name)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in children.items():
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in 60 s; killing it", name)
            proc.kill()
    log.info("all services stopped")
    return code


def cmd_config_check(args) -> int:
    path = args.path or args.config
    cfg = load_config(path)
    print(f"{cfg.source}: OK")
    return 0


def cmd_config_reference(args) -> int:
    for key, tp, default, doc in config_mod.reference(config_mod.Config):
        print(f"{key}\t{tp}\t{default}\t{doc}")
    return 0



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicombox", description=__doc__)
    parser.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $DICOMBOX_CONFIG, "
                             "/etc/dicombox/dicombox.toml, else the embedded default; "
                             "'embedded' selects the embedded default)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a service in the foreground")
    p.add_argument("service", choices=[*SERVICES, "all"])
    p.add_argument("--port", type=int, help="override the service's port (0: any free port)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("config", help="check or describe the configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("path", nargs="?")
    c.set_defaults(func=cmd_config_check)
    c = csub.add_parser("reference", help="list every configuration key")
    c.set_defaults(func=cmd_config_reference)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def subcommand(argv: list[str]) -> str:
    """The sub-command named in ``argv`` (skipping ``--config PATH``), or ""."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return ""


def main(argv=None) -> int:
    if argv is None and subcommand(sys.argv[1:]) == "serve":
        # A service process: numpy is blocked before anything imports pydicom
        # (conversions run in the transcoder's worker; see transcoder.py).
        from .transcoder import without_numpy

        without_numpy()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except CliError as exc:
        print(f"dicombox: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


def format_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write("\n")
