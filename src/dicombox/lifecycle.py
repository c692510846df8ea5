"""Service lifecycle: systemd notifications, signals, watchdog, graceful stop.

Every service is a :class:`Service`: ``start()`` binds its listeners and
starts its workers (raising if it cannot), ``healthy()`` says whether every
worker is alive, ``status()`` is a one-line summary, and ``stop()`` drains.
:func:`run` sends ``READY=1`` only after ``start()`` returned, pings the
watchdog from the main loop only while ``healthy()`` is true, and sends
``STOPPING=1`` before ``stop()`` on SIGTERM or SIGINT.  Without systemd the
notifications are no-ops.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

LOGGER = logging.getLogger("dicombox.lifecycle")


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; a no-op without it."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None):
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]
            self._target = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls) -> Notifier:
        """Take ``NOTIFY_SOCKET``/``WATCHDOG_USEC`` and unset them for children."""
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = None
        return cls(address, int(usec) if usec and usec.isdigit() else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), self._target)
        except OSError as exc:
            LOGGER.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *( [f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def extend_timeout(self, seconds: float) -> None:
        self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Service:
    """Base class of every long-running service."""

    name = "service"

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def healthy(self) -> bool:
        return True

    def status(self) -> str:
        return "running"

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Worker(threading.Thread):
    """A daemon thread that runs ``step()`` until stopped.

    ``step()`` returns the number of seconds to wait before the next call
    (the wait is interrupted by :meth:`wake` and :meth:`stop`).  An exception
    in ``step()`` is logged and the worker dies, which makes the service
    unhealthy so that systemd's watchdog restarts the process, rather than
    leaving it half alive.
    """

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self._wakeup = threading.Event()
        self.failed: BaseException | None = None

    def step(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                delay = self.step()
                if delay and delay > 0:
                    self._wakeup.wait(delay)
                    self._wakeup.clear()
        except BaseException as exc:  # noqa: BLE001 - last-resort handler
            self.failed = exc
            LOGGER.exception("worker %s died", self.name)

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self, timeout: float | None = 10) -> None:
        self.stopping.set()
        self._wakeup.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


def run(service: Service, notifier: Notifier | None = None,
        stop_event: threading.Event | None = None) -> int:
    """Run ``service`` until SIGTERM/SIGINT (or ``stop_event``); return an exit code."""
    notifier = notifier or Notifier.from_env()
    stop_event = stop_event or threading.Event()
    reason = {"signal": None}

    def on_signal(signum, _frame):
        reason["signal"] = signal.Signals(signum).name
        stop_event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    notifier.status(f"{service.name}: starting")
    try:
        service.start()
    except Exception as exc:
        LOGGER.error("%s could not start: %s", service.name, exc)
        notifier.status(f"{service.name}: could not start: {exc}")
        try:
            service.stop()
        except Exception:  # noqa: BLE001
            LOGGER.debug("stop after failed start", exc_info=True)
        return 1
    notifier.ready(service.status())
    LOGGER.info("%s ready: %s", service.name, service.status())
    interval = 5.0
    if notifier.watchdog_usec:
        interval = max(0.05, min(interval, notifier.watchdog_usec / 1_000_000 / 3))
    exit_code = 0
    last_status = None
    while not stop_event.wait(interval):
        if not service.healthy():
            LOGGER.error("%s: a worker died; withholding the watchdog ping", service.name)
            notifier.status(f"{service.name}: unhealthy, a worker died")
            if not notifier.watchdog_usec:
                exit_code = 1
                break
            continue
        notifier.watchdog()
        status = service.status()
        if status != last_status:
            notifier.status(status)
            last_status = status
    LOGGER.info("%s stopping (%s)", service.name, reason["signal"] or "requested")
    notifier.stopping(f"{service.name}: stopping, draining work in flight")
    notifier.extend_timeout(30)
    service.stop()
    notifier.close()
    return exit_code
