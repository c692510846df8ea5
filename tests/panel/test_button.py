"""The button, pressed on gpiozero mock pins, queues media commands."""

from __future__ import annotations

import time

import pytest

from dicombox.panel.service import PanelService


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def panel(panel_config, mock_factory):
    services = []

    def start(**panel):
        svc = PanelService(panel_config(long_press=0.3, **panel), pin_factory=mock_factory)
        svc.start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        svc.stop()


def press(factory, svc, long=False):
    """Press and release the button (pulled up: pressed is low)."""
    pin = factory.pin(svc.config.panel.button)
    count = len(svc.presses)
    pin.drive_low()
    if long:
        assert wait_for(lambda: len(svc.presses) > count), "no long press recognised"
    pin.drive_high()
    assert wait_for(lambda: len(svc.presses) > count)
    return svc.presses[-1]


def test_short_press_burns_the_waiting_job(disk, panel, mock_factory):
    disk.all_up()
    disk.job("OLD", "done", at=100)
    disk.job("A", "ready", at=200)
    disk.job("B", "ready", at=300)
    svc = panel()
    record = press(mock_factory, svc)
    assert (record["press"], record["command"]) == ("short", "burn")
    assert disk.commands() == [("burn", "A")]


def test_short_press_closes_a_collecting_job(disk, panel, mock_factory):
    disk.all_up()
    disk.job("A", "collecting")
    svc = panel()
    press(mock_factory, svc)
    assert disk.commands() == [("burn", "A")]


def test_long_press_cancels_the_running_job(disk, panel, mock_factory):
    disk.all_up()
    disk.job("A", "ready", at=100)
    disk.job("B", "writing", at=200)
    svc = panel()
    record = press(mock_factory, svc, long=True)
    assert (record["press"], record["command"]) == ("long", "cancel")
    # Releasing after a long press is not a short press as well.
    assert [p["press"] for p in svc.presses] == ["long"]
    assert disk.commands() == [("cancel", "B")]


def test_long_press_cancels_a_waiting_job(disk, panel, mock_factory):
    disk.all_up()
    disk.job("A", "ready")
    svc = panel()
    press(mock_factory, svc, long=True)
    assert disk.commands() == [("cancel", "A")]


def test_short_press_when_idle_ejects(disk, panel, mock_factory):
    disk.all_up()
    disk.job("A", "done")
    svc = panel()
    press(mock_factory, svc)
    disk.job("B", "cancelled")
    press(mock_factory, svc)
    assert disk.commands() == [("eject", None), ("eject", None)]


def test_presses_that_mean_nothing_queue_nothing(disk, panel, mock_factory):
    disk.all_up()
    disk.job("A", "writing")
    svc = panel()
    press(mock_factory, svc)  # short press while burning: no command
    disk.job("A", "done")
    press(mock_factory, svc, long=True)  # long press with nothing to cancel
    assert [(p["press"], p.get("command")) for p in svc.presses] == [("short", None),
                                                                     ("long", None)]
    assert disk.commands() == []


def test_press_without_media_service_is_reported_not_fatal(disk, panel, mock_factory):
    """No media index yet: the press is logged as an error; the panel runs on
    and does not create the media service's database."""
    disk.publish("router")
    svc = panel()
    record = press(mock_factory, svc)
    assert record["command"] == "eject"
    assert "no media index" in record["error"]
    assert not (disk.state_dir / "media" / "index.db").exists()
    assert svc.healthy()


def test_press_shows_in_published_state(disk, panel, mock_factory):
    disk.all_up()
    disk.job("A", "ready")
    svc = panel()
    press(mock_factory, svc)
    svc.publish()
    snap = svc.snapshot()
    assert snap["presses"][-1]["command"] == "burn"
    assert snap["gpio"] == "MockFactory"


def test_leds_work_without_a_writable_state_dir(disk, panel_config, mock_factory, tmp_path):
    """The panel's own publication is secondary: a state directory it cannot
    write (here a path below a regular file) leaves the LEDs and button working."""
    import dataclasses
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = panel_config(long_press=0.3)
    config = dataclasses.replace(config, box=dataclasses.replace(
        config.box, state_dir=blocker / "state"))
    svc = PanelService(config, pin_factory=mock_factory)
    svc.start()
    try:
        assert svc.db is None
        assert wait_for(lambda: svc.renderer.current().get("power") == "blink")
        record = press(mock_factory, svc)
        assert "no media index" in record["error"]
        assert svc.healthy()
    finally:
        svc.stop()
