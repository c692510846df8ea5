"""LED patterns: named, cyclic sequences of (level, seconds) steps.

A pattern is data; :meth:`Pattern.level_at` answers "how bright is the LED
``elapsed`` seconds after the pattern was put on it, and for how much longer
does that hold".  Computing levels from a clock (rather than running one
blink thread per LED, as gpiozero's ``blink()`` does) keeps every LED of the
panel in step and makes the output reproducible for a given sequence of
clock readings, which is how the tests check whole sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.panel import PanelSection


@dataclass(frozen=True)
class Pattern:
    name: str
    #: (level 0..1, seconds) steps repeated forever; one step means steady.
    steps: tuple[tuple[float, float], ...]

    @property
    def period(self) -> float:
        return sum(seconds for _, seconds in self.steps)

    def level_at(self, elapsed: float) -> tuple[float, float]:
        """(level, seconds until the level changes) ``elapsed`` s after the start."""
        if len(self.steps) == 1:
            return self.steps[0][0], math.inf
        t = max(0.0, elapsed) % self.period
        for level, seconds in self.steps:
            if t < seconds:
                return level, seconds - t
            t -= seconds
        # Rounding at the very end of a period: the first step starts again.
        return self.steps[0][0], self.steps[0][1]


def patterns(cfg: PanelSection) -> dict[str, Pattern]:
    """Every pattern the LED table may name, with the configured timings."""
    return {p.name: p for p in (
        Pattern("off", ((0.0, math.inf),)),
        Pattern("on", ((1.0, math.inf),)),
        Pattern("blink", ((1.0, cfg.blink_on), (0.0, cfg.blink_off))),
        Pattern("fast", ((1.0, cfg.fast_blink_on), (0.0, cfg.fast_blink_off))),
        Pattern("wink", ((1.0, cfg.wink_on), (0.0, cfg.wink_off))),
    )}
