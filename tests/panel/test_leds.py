"""Each box state, read from real SQLite indexes, lights the documented LED
patterns; whole pin state sequences are compared, not prefixes."""

from __future__ import annotations

import time

import pytest

from dicombox.panel.hardware import LedRenderer, PanelHardware
from dicombox.panel.state import StateReader
from dicombox.panel.table import LED_TABLE, led_patterns

#: Render times (seconds after the patterns were put on the LEDs) and the full
#: list of pin states each pattern produces over them with the default
#: timings (blink 0.5/0.5, fast 0.1/0.1, wink 0.1/1.9).
TIMELINE = (0.0, 0.05, 0.15, 0.25, 0.55, 1.05, 1.55, 2.05)
SEQUENCES = {
    "off": [0],
    "on": [0, 1],
    "blink": [0, 1, 0, 1, 0, 1],
    "fast": [0, 1, 0, 1, 0, 1, 0, 1],
    "wink": [0, 1, 0, 1],
}

BASE = {"power": "on", "network": "off", "media": "off", "error": "off"}


def up(disk, **fields):
    disk.all_up(**fields)


SCENARIOS = {
    "booting": (lambda d: None, 60, {"power": "blink"}),
    "ready": (up, 0, {}),
    "associations": (lambda d: (up(d), d.publish("router", active_associations=2)), 0,
                     {"network": "on"}),
    "service stopped": (lambda d: (up(d), d.publish("mpps", stopped=True)), 0,
                        {"error": "fast"}),
    "service silent": (lambda d: (up(d), d.publish("media", at=time.time() - 60)), 0,
                       {"error": "fast"}),
    "service never ran": (lambda d: (d.publish("router"), d.publish("media")), 0,
                          {"error": "fast"}),
    "disk reserve": (lambda d: (up(d), d.publish("router", free_bytes=10, reserve_bytes=100)),
                     0, {"error": "blink"}),
    "dead letters": (lambda d: (up(d), d.dead_letter(2)), 0, {"error": "on"}),
    "mpps dead letter": (lambda d: (up(d), d.mpps_dead_delivery()), 0, {"error": "on"}),
    "down beats disk and dead letters": (
        lambda d: (up(d), d.dead_letter(), d.publish("router", free_bytes=0),
                   d.publish("mpps", stopped=True)), 0, {"error": "fast"}),
    "disk beats dead letters": (
        lambda d: (up(d), d.dead_letter(), d.publish("router", free_bytes=0)), 0,
        {"error": "blink"}),
    "media collecting": (lambda d: (up(d), d.job("A", "collecting")), 0, {"media": "wink"}),
    "media waiting": (lambda d: (up(d), d.job("A", "ready")), 0, {"media": "wink"}),
    "media building": (lambda d: (up(d), d.job("A", "building")), 0, {"media": "blink"}),
    "media writing": (lambda d: (up(d), d.job("A", "writing")), 0, {"media": "blink"}),
    "media verifying": (lambda d: (up(d), d.job("A", "verifying")), 0, {"media": "blink"}),
    "burning beats waiting": (
        lambda d: (up(d), d.job("A", "ready"), d.job("B", "writing")), 0, {"media": "blink"}),
    "media done": (lambda d: (up(d), d.job("A", "done")), 0, {"media": "on"}),
    "media failed": (lambda d: (up(d), d.job("A", "failed")), 0, {"media": "fast"}),
    "media done, ejected": (
        lambda d: (up(d), d.job("A", "done", at=100), d.command("eject", at=101)), 0, {}),
    "media failed, then done": (
        lambda d: (up(d), d.job("A", "failed", at=100), d.job("B", "done", at=101)), 0,
        {"media": "on"}),
    "media cancelled": (lambda d: (up(d), d.job("A", "cancelled")), 0, {}),
    "everything at once": (
        lambda d: (up(d), d.publish("media", active_associations=1),
                   d.publish("router", stopped=True), d.job("A", "writing")), 0,
        {"network": "on", "media": "blink", "error": "fast"}),
}


def render_states(config, state, mock_factory) -> dict[str, list]:
    hw = PanelHardware(config.panel, pin_factory=mock_factory)
    try:
        renderer = LedRenderer(config.panel, hw.set_level)
        renderer.show(led_patterns(state), 0.0)
        for t in TIMELINE:
            renderer.render(t)
        return {led: [s.state for s in hw.leds[led].pin.states] for led in hw.leds}
    finally:
        hw.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_box_state_lights_documented_pattern(name, disk, panel_config, mock_factory):
    setup, grace, expected = SCENARIOS[name]
    config = panel_config(startup_grace=grace)
    setup(disk)
    reader = StateReader(config.box.state_dir, ("router", "mpps", "media"),
                         stale_after=config.panel.stale_after, startup_grace=grace)
    try:
        state = reader.read()
    finally:
        reader.close()
    chosen = {**BASE, **expected}
    assert led_patterns(state) == chosen
    assert render_states(config, state, mock_factory) == {
        led: SEQUENCES[pattern] for led, pattern in chosen.items()}


def test_every_table_row_is_exercised():
    """Every (LED, pattern) the table documents appears in a scenario above."""
    seen = {(led, p) for _, _, exp in SCENARIOS.values() for led, p in {**BASE, **exp}.items()}
    documented = {(led, pattern) for led, _, pattern, _ in LED_TABLE}
    assert documented <= seen


def test_patterns_are_distinct_over_the_timeline():
    assert len({tuple(s) for s in SEQUENCES.values()}) == len(SEQUENCES)


def test_inverted_polarity_and_dimming(disk, panel_config, mock_factory):
    """Active-low LEDs see the inverted levels; brightness scales the duty cycle."""
    config = panel_config(led_active_high=False, led_brightness=0.25)
    disk.all_up()
    disk.job("A", "building")
    reader = StateReader(config.box.state_dir, ("router", "mpps", "media"), startup_grace=0)
    state = reader.read()
    reader.close()
    states = render_states(config, state, mock_factory)
    # The pin starts as an input (0), becomes an output that is dark (1 when
    # active-low), then lit at a quarter duty cycle (0.75).
    assert states["power"] == [0, 1, 0.75]
    assert states["media"] == [0, 1, 0.75, 1, 0.75, 1, 0.75]
    assert states["error"] == [0, 1]


def test_disabled_services_are_not_watched(disk, tmp_path, mock_factory):
    """With mpps and media disabled, only the router's health counts."""
    from dicombox.config import load

    from helpers import write_config
    config = load(write_config(tmp_path, mpps={"enabled": False}, media={"enabled": False},
                               panel={"startup_grace": 0}))
    from dicombox.panel.service import PanelService
    svc = PanelService(config, pin_factory=mock_factory)
    assert svc.services == ["router"]
    disk.publish("router")
    assert led_patterns(svc.reader.read()) == BASE
    svc.reader.close()
    svc._button_reader.close()
