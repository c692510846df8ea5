"""The front panel's section: LEDs, the button, and how they blink.

Pins are gpiozero pin names: a BCM number (``17`` or ``"GPIO17"``) or a
header position (``"BOARD11"``).  Polarity is per board: LEDs wired from the
pin to ground are active-high; a button wired from the pin to ground uses the
internal pull-up.  The blink timings define the patterns the LED table
(``dicombox.panel.table``) refers to by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .schema import ConfigError, setting

_PIN_RE = re.compile(r"^(?:GPIO|BCM|BOARD|J8:|WPI)?\d{1,2}$")

#: The LEDs on the panel, in the order they are documented.
LEDS = ("power", "network", "media", "error")


def check_pin(value: int | str) -> str | None:
    if isinstance(value, int):
        if not 0 <= value <= 53:
            return f"GPIO number must be between 0 and 53, not {value}"
        return None
    if not _PIN_RE.match(value):
        return (f"{value!r} is not a pin name (use a BCM number such as 17 or 'GPIO17', "
                "or a header position such as 'BOARD11')")
    return None


@dataclass(frozen=True)
class PanelSection:
    enabled: bool = setting(True, doc="run the panel service")
    gpio: Literal["required", "optional", "off"] = setting(
        "optional",
        doc="'required': the panel does not start without GPIO; 'optional': without a GPIO "
            "chip (and no GPIOZERO_PIN_FACTORY) it runs without LEDs, still publishing the "
            "LED states for `dicombox status`; 'off': never touch GPIO")
    power_led: int | str = setting(17, check=check_pin, doc="pin of the power/ready LED")
    network_led: int | str = setting(27, check=check_pin,
                                     doc="pin of the network LED (associations in progress)")
    media_led: int | str = setting(22, check=check_pin, doc="pin of the media (burner) LED")
    error_led: int | str = setting(23, check=check_pin, doc="pin of the error LED")
    led_active_high: bool = setting(
        True, doc="LEDs light when the pin is high (false: wired to +3.3 V, lit when low)")
    led_brightness: float = setting(1.0, min=0.05, max=1.0,
                                    doc="PWM duty cycle of a lit LED (dim for dark rooms)")
    button: int | str = setting(24, check=check_pin, doc="pin of the push button")
    button_pull_up: bool = setting(
        True, doc="the button connects the pin to ground (internal pull-up); false: to +3.3 V")
    button_bounce: float = setting(0.05, min=0, max=1, doc="debounce time of the button, seconds")
    long_press: float = setting(2.0, min=0.3, max=10,
                                doc="seconds the button is held for a long press (cancel)")
    blink_on: float = setting(0.5, min=0.02, max=10, doc="'blink' pattern: seconds lit")
    blink_off: float = setting(0.5, min=0.02, max=10, doc="'blink' pattern: seconds dark")
    fast_blink_on: float = setting(0.1, min=0.02, max=10, doc="'fast' pattern: seconds lit")
    fast_blink_off: float = setting(0.1, min=0.02, max=10, doc="'fast' pattern: seconds dark")
    wink_on: float = setting(0.1, min=0.02, max=10,
                             doc="'wink' pattern (a job waits for the button): seconds lit")
    wink_off: float = setting(1.9, min=0.02, max=10, doc="'wink' pattern: seconds dark")
    poll_interval: float = setting(0.5, min=0.05, max=10,
                                   doc="seconds between two reads of the services' state")
    stale_after: float = setting(
        20.0, min=1, max=600,
        doc="a service whose published state is older than this many seconds is down")
    startup_grace: float = setting(
        60.0, min=0, max=3600,
        doc="seconds after the panel starts during which a silent service counts as "
            "starting (power LED blinks) rather than failed (error LED)")

    def validate(self, key: str) -> None:
        pins: dict[str, str] = {}
        for name in ("power_led", "network_led", "media_led", "error_led", "button"):
            pin = str(getattr(self, name)).upper()
            pin = f"GPIO{pin}" if pin.isdigit() else pin.replace("BCM", "GPIO")
            if pin in pins:
                raise ConfigError(f"{key}.{name}" if key else name,
                                  f"pin {getattr(self, name)!r} is already used by {pins[pin]}")
            pins[pin] = name

    def led_pins(self) -> dict[str, int | str]:
        return {name: getattr(self, f"{name}_led") for name in LEDS}


def validate_config(config) -> None:
    """Checks across sections."""
