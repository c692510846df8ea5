"""systemd notifications from a real `dicombox serve router` on a real NOTIFY_SOCKET."""

import threading

from dicombox.lifecycle import Notifier, Service, Worker, run

from helpers import BoxProcess, NotifySocket, write_config


def test_router_notifies_ready_watchdog_stopping(tmp_path):
    cfg = write_config(tmp_path)
    router = BoxProcess("router", cfg)
    router.start(watchdog_usec=600_000)
    notify = router.notify
    try:
        assert notify.wait_for("READY=1", 30)
        ready_at = notify.messages.index("READY=1")
        assert notify.wait_for("WATCHDOG=1", 10, start=ready_at)
        assert any(m.startswith("STATUS=") and "DICOMBOX" in m for m in notify.messages)
        router.proc.send_signal(15)
        assert notify.wait_for("STOPPING=1", 30)
        assert router.proc.wait(30) == 0
    finally:
        router.stop()
    # Nothing was pinged before READY.
    assert "WATCHDOG=1" not in notify.messages[:ready_at]


class _Dying(Worker):
    def step(self):
        raise RuntimeError("boom")


class _Svc(Service):
    name = "test"

    def __init__(self):
        self.worker = _Dying("dying")

    def start(self):
        self.worker.start()

    def healthy(self):
        return self.worker.is_alive()

    def stop(self):
        self.worker.stop()


def test_no_watchdog_ping_once_a_worker_died():
    sock = NotifySocket()
    try:
        notifier = Notifier(sock.path, watchdog_usec=300_000)
        stop = threading.Event()
        t = threading.Thread(target=run, args=(_Svc(), notifier, stop))
        t.start()
        assert sock.wait_for("READY=1", 10)
        assert sock.wait_for("STATUS=test: unhealthy, a worker died", 10)
        stop.set()
        t.join(10)
        assert sock.wait_for("STOPPING=1", 10)
        assert "WATCHDOG=1" not in sock.messages
    finally:
        sock.close()


def test_abstract_socket_address_and_no_socket():
    Notifier(None).ready()  # a no-op without systemd
    n = Notifier("@dicombox-test-nonexistent")
    n.ready()  # unreachable socket: logged, never raised
    n.close()
