"""The front panel: LEDs that show the box's state at a glance, and a button.

The panel owns the GPIO pins (gpiozero reserves them per process) and reads
everything it shows from the services' shared state on disk, never from
their logs: ``table`` maps a :class:`~.state.BoxState` to LED patterns and
button presses to media commands, ``state`` reads the SQLite indexes,
``patterns`` turns pattern names into levels over time, ``hardware`` is the
gpiozero seam, and ``service`` ties them together as a systemd service.
"""
