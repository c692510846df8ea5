"""The GPIO seam: LEDs and the button through gpiozero, and the LED renderer.

gpiozero takes a ``pin_factory`` per device; production passes ``None``
(gpiozero picks lgpio on the box, or what ``GPIOZERO_PIN_FACTORY`` names),
tests pass a ``MockFactory`` with PWM-capable mock pins.  Nothing here
imports the mock.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
from collections.abc import Callable

from ..config.panel import LEDS, PanelSection
from .patterns import Pattern, patterns

LOGGER = logging.getLogger("dicombox.panel")


class GpioUnavailable(RuntimeError):
    """No GPIO pins could be opened (no chip, no usable pin factory)."""


def gpio_present() -> bool:
    """Whether this machine has a GPIO chip or a pin factory was chosen explicitly."""
    return bool(os.environ.get("GPIOZERO_PIN_FACTORY") or glob.glob("/dev/gpiochip*"))


class PanelHardware:
    """The panel's LEDs (PWM, for dimming) and its one button."""

    def __init__(self, cfg: PanelSection, pin_factory=None):
        from gpiozero import PWMLED, Button
        from gpiozero.exc import GPIOZeroError

        self.leds: dict = {}
        self.button = None
        try:
            for name, pin in cfg.led_pins().items():
                self.leds[name] = PWMLED(pin, active_high=cfg.led_active_high,
                                         initial_value=0, pin_factory=pin_factory)
            self.button = Button(cfg.button, pull_up=cfg.button_pull_up,
                                 bounce_time=cfg.button_bounce or None,
                                 hold_time=cfg.long_press, pin_factory=pin_factory)
        except (GPIOZeroError, OSError, ImportError) as exc:
            self.close()
            raise GpioUnavailable(f"cannot open the panel's GPIO pins: {exc}") from exc
        self.factory = type(self.button.pin_factory).__name__

    def set_level(self, led: str, level: float) -> None:
        self.leds[led].value = level

    def on_press(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("short")`` on release of a short press and
        ``callback("long")`` as soon as the button has been held long enough."""
        held = {"flag": False}

        def pressed():
            held["flag"] = False

        def long_press():
            held["flag"] = True
            callback("long")

        def released():
            if not held["flag"]:
                callback("short")

        self.button.when_pressed = pressed
        self.button.when_held = long_press
        self.button.when_released = released

    def close(self) -> None:
        """Release the pins (idempotent); LEDs go dark."""
        for led in self.leds.values():
            led.close()
        if self.button is not None:
            self.button.close()


class LedRenderer:
    """Shows one pattern per LED and computes the levels over time.

    ``show()`` puts patterns on the LEDs (a changed pattern starts at its
    first step, so a change is visible at once; an unchanged one keeps its
    phase); ``render(now)`` writes each LED's level through ``set_level``
    (only when it changes) and returns the seconds until the next change.
    """

    def __init__(self, cfg: PanelSection, set_level: Callable[[str, float], None] | None):
        self.patterns: dict[str, Pattern] = patterns(cfg)
        self.brightness = cfg.led_brightness
        self.set_level = set_level
        self._lock = threading.Lock()
        self._shown: dict[str, tuple[Pattern, float]] = {}
        self._levels: dict[str, float] = {}

    def show(self, chosen: dict[str, str], now: float) -> bool:
        """Put the named patterns on the LEDs; True if anything changed."""
        changed = False
        with self._lock:
            for led in LEDS:
                pattern = self.patterns[chosen.get(led, "off")]
                current = self._shown.get(led)
                if current is None or current[0] != pattern:
                    self._shown[led] = (pattern, now)
                    changed = True
        return changed

    def current(self) -> dict[str, str]:
        with self._lock:
            return {led: shown[0].name for led, shown in self._shown.items()}

    def render(self, now: float) -> float:
        wait = math.inf
        with self._lock:
            for led, (pattern, since) in self._shown.items():
                level, left = pattern.level_at(now - since)
                level *= self.brightness
                wait = min(wait, left)
                if self._levels.get(led) != level:
                    self._levels[led] = level
                    if self.set_level is not None:
                        self.set_level(led, level)
        return wait
