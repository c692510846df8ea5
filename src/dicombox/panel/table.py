"""What the panel shows and does, as tables.

``LED_TABLE`` lists, per LED, conditions on the :class:`~.state.BoxState`
and the pattern that applies; the first row of an LED whose condition holds
wins.  A condition is ``"*"`` (always), the name of a state attribute that
must be true (non-zero), or ``"attribute=value"``.  ``BUTTON_TABLE`` maps a
press (short or long) in a media phase to the command the panel hands to
the media service.  The README's LED section is this table in words.
"""

from __future__ import annotations

from .state import BoxState

#: (LED, condition, pattern, meaning): first matching row per LED wins.
LED_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("power", "starting", "blink", "the box is starting: not every service is up yet"),
    ("power", "*", "on", "the box is on and its services have started"),
    ("network", "associations", "on", "DICOM associations are in progress"),
    ("network", "*", "off", "no association in progress"),
    ("media", "media=failed", "fast", "the last medium failed (press the button to eject)"),
    ("media", "media=burning", "blink", "a medium is being built, written or verified"),
    ("media", "media=waiting", "wink",
     "a job waits for a blank medium or the button (short press: burn, long: cancel)"),
    ("media", "media=collecting", "wink", "a job is collecting images (short press: burn now)"),
    ("media", "media=done", "on", "the last medium is done and verified (press to eject)"),
    ("media", "*", "off", "idle: nothing to burn"),
    ("error", "service_down", "fast", "a service has failed or stopped"),
    ("error", "disk_reserve", "blink", "the disk reserve is reached: new images are refused"),
    ("error", "dead_letters", "on",
     "images or procedure steps could not be delivered (`dicombox queue list`, "
     "`dicombox mpps list`; retry with `dicombox queue retry --dead`, `dicombox mpps retry`)"),
    ("error", "*", "off", "no error"),
)

#: (press, media phase) -> command for the media service, acting on the job
#: the phase refers to (``eject`` has no job).  Presses not listed do nothing.
BUTTON_TABLE: dict[tuple[str, str], str] = {
    ("short", "waiting"): "burn",
    ("short", "collecting"): "burn",
    ("short", "idle"): "eject",
    ("short", "done"): "eject",
    ("short", "failed"): "eject",
    ("long", "burning"): "cancel",
    ("long", "waiting"): "cancel",
    ("long", "collecting"): "cancel",
}


def holds(condition: str, state: BoxState) -> bool:
    if condition == "*":
        return True
    name, eq, value = condition.partition("=")
    actual = getattr(state, name)
    return str(actual) == value if eq else bool(actual)


def led_patterns(state: BoxState) -> dict[str, str]:
    """The pattern name of every LED for ``state``."""
    chosen: dict[str, str] = {}
    for led, condition, pattern, _ in LED_TABLE:
        if led not in chosen and holds(condition, state):
            chosen[led] = pattern
    return chosen


def button_action(press: str, state: BoxState) -> tuple[str, str | None] | None:
    """(command, job id) for a ``"short"`` or ``"long"`` press, or None."""
    command = BUTTON_TABLE.get((press, state.media))
    if command is None:
        return None
    return command, (None if command == "eject" else state.media_job)


#: How each pattern looks, in words (timings from the default configuration).
PATTERN_WORDS = {
    "off": "dark",
    "on": "steady",
    "blink": "blinks (½ s on, ½ s off)",
    "fast": "flashes fast (5 times a second)",
    "wink": "winks (a short flash every 2 s)",
}


def led_table_markdown() -> str:
    """The LED table as the README shows it: per LED, the first row that
    applies wins, so rows are listed in order of precedence."""
    lines = ["| LED | looks | means |", "|---|---|---|"]
    for led, _, pattern, meaning in LED_TABLE:
        lines.append(f"| {led} | {PATTERN_WORDS[pattern]} | {meaning} |")
    return "\n".join(lines)


#: What each command does, in words.
COMMAND_WORDS = {
    "burn": "closes that job and burns it now",
    "eject": "ejects the disc",
    "cancel": "cancels the job being burned, else the waiting one",
}


def button_table_markdown() -> str:
    """The button's actions as the README shows them, by what the media LED shows."""
    looks = {condition.partition("=")[2]: PATTERN_WORDS[pattern]
             for led, condition, pattern, _ in LED_TABLE
             if led == "media" and condition.startswith("media=")}
    looks["idle"] = PATTERN_WORDS["off"]
    grouped: dict[tuple[str, str], list[str]] = {}
    for (press, phase), command in BUTTON_TABLE.items():
        shown = looks[phase]
        rows = grouped.setdefault((press, command), [])
        if shown not in rows:
            rows.append(shown)
    words = {"short": "short press", "long": "long press (2 s)"}
    lines = ["| press | while the media LED | the box |", "|---|---|---|"]
    for (press, command), shown in grouped.items():
        either = ", ".join(shown[:-1]) + (" or " if len(shown) > 1 else "") + shown[-1]
        lines.append(f"| {words[press]} | {either} | {COMMAND_WORDS[command]} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(led_table_markdown())
    print()
    print(button_table_markdown())
