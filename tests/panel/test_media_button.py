"""The button against a real, running media service: DCMTK sends a study to
the burner AE, the job waits (``auto_burn = false``), a short press burns it
to an xorriso pseudo-drive, a long press cancels the next one.  The panel
runs in this process on gpiozero mock pins; the media service is its own
process, executing the commands the button queued."""

from __future__ import annotations

import sqlite3
import time

import pytest

from dicombox.config import load
from dicombox.panel.service import PanelService

from datagen import ct_series
from helpers import dcmtk, write_config


def query(state, sql, params=()):
    path = state / "media" / "index.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_states(state):
    return dict(query(state, "SELECT id, state FROM media_jobs"))


class MediaLed:
    """Records every pattern the panel puts on the media LED, in order."""

    def __init__(self, svc):
        self.seen: list[str] = []
        show = svc.renderer.show

        def recording(chosen, now):
            if not self.seen or self.seen[-1] != chosen.get("media"):
                self.seen.append(chosen.get("media"))
            return show(chosen, now)

        svc.renderer.show = recording


@pytest.fixture
def setup(tmp_path, box, mock_factory):
    cfg = write_config(
        tmp_path,
        media={"grouping": "association", "idle_seconds": 0.5, "auto_burn": False,
               "writer": "optical", "udev": False, "probe_seconds": 0.3,
               "optical": {"device": f"stdio:{tmp_path / 'disc.iso'}"}},
        panel={"long_press": 0.3, "poll_interval": 0.05, "startup_grace": 0})
    media = box("media", config=cfg)
    config = load(cfg)
    svc = PanelService(config, pin_factory=mock_factory)
    svc.start()
    yield cfg, config.box.state_dir, media, svc
    svc.stop()


def send_study(cfg, directory, port):
    files = ct_series(directory, 3)
    r = dcmtk("storescu", "-aec", "DICOMBOX_CD", "127.0.0.1", port, *files)
    assert r.returncode == 0, r.stdout + r.stderr


def press(factory, svc, long=False):
    pin = factory.pin(svc.config.panel.button)
    count = len(svc.presses)
    pin.drive_low()
    if long:
        wait_until(lambda: len(svc.presses) > count, 10, "the long press")
    pin.drive_high()
    wait_until(lambda: len(svc.presses) > count, 10, "the press")
    return svc.presses[-1]


def handled(state, row):
    rows = query(state, "SELECT command, job_id, result FROM media_commands "
                        "WHERE id = ? AND handled_at IS NOT NULL", (row,))
    return rows[0] if rows else None


def test_short_press_burns_the_waiting_job_long_press_cancels(setup, tmp_path, mock_factory):
    cfg, state, media, svc = setup
    led = MediaLed(svc)
    port = load(cfg).media.port
    # The panel's first reading, before anything is sent: nothing waiting.
    wait_until(lambda: led.seen, what="the panel's first reading")
    assert led.seen == ["off"], led.seen

    send_study(cfg, tmp_path / "study1", port)
    first = wait_until(lambda: [j for j, s in job_states(state).items() if s == "ready"],
                       what="a waiting job")[0]
    wait_until(lambda: svc.renderer.current().get("media") == "wink", what="the wink")

    record = press(mock_factory, svc)
    assert (record["press"], record["command"], record["job_id"]) == ("short", "burn", first)
    command, job, result = wait_until(lambda: handled(state, record["row"]),
                                      what="the burn command handled")
    assert (command, job) == ("burn", first)
    assert not result.startswith("refused"), result
    wait_until(lambda: job_states(state)[first] == "done", 120, "the burn")
    wait_until(lambda: svc.renderer.current().get("media") == "on", what="the steady LED")
    assert (tmp_path / "disc.iso").stat().st_size > 0

    # What the media LED went through: waiting, (burning,) done - nothing else.
    assert led.seen[0] == "off" and led.seen[1] == "wink" and led.seen[-1] == "on"
    assert set(led.seen[2:-1]) <= {"blink"}, led.seen

    # Pressed again with the result showing: the disc is ejected, the LED goes dark.
    record = press(mock_factory, svc)
    assert (record["command"], record["job_id"]) == ("eject", None)
    wait_until(lambda: handled(state, record["row"]), what="the eject command handled")
    wait_until(lambda: svc.renderer.current().get("media") == "off", what="the dark LED")

    send_study(cfg, tmp_path / "study2", port)
    second = wait_until(lambda: [j for j, s in job_states(state).items()
                                 if s == "ready" and j != first], what="a second job")[0]
    record = press(mock_factory, svc, long=True)
    assert (record["press"], record["command"], record["job_id"]) == ("long", "cancel", second)
    wait_until(lambda: job_states(state)[second] == "cancelled", what="the cancel")
    wait_until(lambda: svc.renderer.current().get("media") == "off", what="the dark LED")
    assert job_states(state)[first] == "done"
    assert [p["press"] for p in svc.presses] == ["short", "short", "long"]
