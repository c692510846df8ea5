"""`dicombox serve panel` as a real process on mock pins, next to a real router."""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import time

import pytest

from helpers import DICOMBOX, BoxProcess, write_config

MOCK_PINS = {"GPIOZERO_PIN_FACTORY": "mock", "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin"}


def panel_snapshot(state_dir) -> dict | None:
    path = state_dir / "panel" / "index.db"
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM service_state WHERE key = 'panel'").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def wait_leds(state_dir, expected: dict, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    snap = None
    while time.monotonic() < deadline:
        snap = panel_snapshot(state_dir)
        if snap and {k: snap["leds"].get(k) for k in expected} == expected:
            return snap
        time.sleep(0.1)
    raise AssertionError(f"LEDs never showed {expected}; last published: {snap}")


@pytest.fixture
def processes():
    started: list[BoxProcess] = []
    yield started
    for p in started:
        p.stop(timeout=30)


def test_panel_process_follows_a_real_router(tmp_path, box, processes):
    cfg = write_config(tmp_path, mpps={"enabled": False}, media={"enabled": False},
                       panel={"gpio": "required", "startup_grace": 0})
    state = tmp_path / "state"
    panel = BoxProcess("panel", cfg, env=MOCK_PINS)
    processes.append(panel)
    panel.start(watchdog_usec=3_000_000)
    # No router yet: the only watched service is down.
    snap = wait_leds(state, {"power": "on", "error": "fast"})
    assert snap["gpio"] == "MockFactory"
    router = box("router", config=cfg)
    wait_leds(state, {"power": "on", "network": "off", "media": "off", "error": "off"})
    assert panel.notify.wait_for("WATCHDOG=1")
    router.stop()
    wait_leds(state, {"error": "fast"})
    assert panel.stop() == 0
    assert panel_snapshot(state)["stopped"] is True


def test_required_gpio_without_pins_fails_in_one_line(tmp_path):
    cfg = write_config(tmp_path, panel={"gpio": "required", "power_led": "BOARD1"})
    proc = subprocess.run([*DICOMBOX, "--config", str(cfg), "serve", "panel"],
                          env={**os.environ, **MOCK_PINS}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "could not start: cannot open the panel's GPIO pins" in proc.stderr


def test_optional_gpio_on_a_machine_without_pins_runs_headless(tmp_path, processes,
                                                               monkeypatch):
    """`make run` on a laptop: no GPIO chip, no pin factory chosen; the panel
    runs without LEDs and still publishes what they would show."""
    if glob.glob("/dev/gpiochip*"):
        pytest.skip("this machine has a GPIO chip")
    for key in [k for k in os.environ if k.startswith("GPIOZERO_")]:
        monkeypatch.delenv(key)
    cfg = write_config(tmp_path, panel={"gpio": "optional"})
    panel = BoxProcess("panel", cfg)
    processes.append(panel)
    panel.start()
    snap = wait_leds(tmp_path / "state", {"power": "blink"})
    assert snap["gpio"] is None
    assert panel.stop() == 0


@pytest.mark.parametrize("panel, message", [
    ({"power_led": 17, "error_led": "GPIO17"}, "panel.error_led: pin 'GPIO17' is already used"),
    ({"button": "PIN7"}, "panel.button: 'PIN7' is not a pin name"),
    ({"media_led": 99}, "panel.media_led: GPIO number must be between 0 and 53"),
    ({"gpio": "maybe"}, "panel.gpio: must be one of"),
    ({"long_press": 0.1}, "panel.long_press: must be at least 0.3"),
])
def test_bad_panel_configuration_names_the_key(tmp_path, panel, message):
    cfg = write_config(tmp_path, panel=panel)
    proc = subprocess.run([*DICOMBOX, "--config", str(cfg), "config", "check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
