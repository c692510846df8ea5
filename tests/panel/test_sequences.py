"""Whole LED sequences while the box's state changes on disk: a media job's
life, and a service that fails and comes back."""

from __future__ import annotations

from dicombox.panel.hardware import LedRenderer, PanelHardware
from dicombox.panel.state import StateReader
from dicombox.panel.table import led_patterns


class Panel:
    """Reader + renderer + mock pins, driven at chosen clock readings."""

    def __init__(self, config, factory):
        self.reader = StateReader(config.box.state_dir, ("router", "mpps", "media"),
                                  stale_after=config.panel.stale_after, startup_grace=0)
        self.hw = PanelHardware(config.panel, pin_factory=factory)
        self.renderer = LedRenderer(config.panel, self.hw.set_level)
        self.shown: list[dict] = []

    def poll(self, now: float, *render_at: float) -> None:
        self.renderer.show(led_patterns(self.reader.read()), now)
        self.shown.append(self.renderer.current())
        for t in (now, *render_at):
            self.renderer.render(t)

    def states(self, led: str) -> list:
        return [s.state for s in self.hw.leds[led].pin.states]

    def patterns(self, led: str) -> list[str]:
        return [shown[led] for shown in self.shown]

    def close(self):
        self.reader.close()
        self.hw.close()


def test_media_job_life(disk, panel_config, mock_factory):
    panel = Panel(panel_config(), mock_factory)
    try:
        disk.all_up()
        disk.job("A", "collecting", at=1000)
        panel.poll(0.0, 0.15)                 # wink: lit 0.1 s of every 2 s
        disk.job("A", "ready", at=1001)
        panel.poll(1.0, 2.05)                 # still wink, same phase
        disk.job("A", "building", at=1002)
        panel.poll(2.2, 2.8, 3.25)            # blink restarts lit
        disk.job("A", "writing", at=1003)
        panel.poll(3.3, 3.8)                  # same blink, keeps its phase
        disk.job("A", "verifying", at=1004)
        panel.poll(4.0, 4.3)
        disk.job("A", "done", at=1005)
        panel.poll(4.4, 5.0)                  # steady
        disk.command("eject", at=1006)
        panel.poll(5.5)                       # acknowledged: dark
        disk.job("B", "failed", at=1007)
        panel.poll(6.0, 6.15, 6.25)           # fast blink
        assert panel.patterns("media") == ["wink", "wink", "blink", "blink", "blink", "on",
                                           "off", "fast"]
        assert panel.states("media") == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
        # Nothing else moved meanwhile.
        assert panel.states("power") == [0, 1]
        assert panel.states("network") == [0]
        assert panel.states("error") == [0]
    finally:
        panel.close()


def test_service_fails_and_recovers(disk, panel_config, mock_factory):
    panel = Panel(panel_config(), mock_factory)
    try:
        disk.all_up()
        panel.poll(0.0, 0.5)
        disk.publish("router", stopped=True)  # a clean stop: down at once
        panel.poll(1.0, 1.15, 1.25)
        disk.publish("router", active_associations=1)  # restarted and busy
        panel.poll(2.0, 2.5)
        disk.publish("router")
        panel.poll(3.0)
        assert panel.patterns("error") == ["off", "fast", "off", "off"]
        assert panel.states("error") == [0, 1, 0, 1, 0]
        assert panel.patterns("network") == ["off", "off", "on", "off"]
        assert panel.states("network") == [0, 1, 0]
        assert panel.states("power") == [0, 1]
    finally:
        panel.close()


def test_unreadable_index_reads_as_nothing(disk, panel_config, mock_factory, tmp_path):
    """A corrupt media index does not stop the panel; the media service shows
    as down (error LED) and the media LED as idle."""
    panel = Panel(panel_config(), mock_factory)
    try:
        disk.publish("router")
        disk.publish("mpps")
        media = disk.state_dir / "media"
        media.mkdir(parents=True)
        (media / "index.db").write_bytes(b"this is not a database" * 100)
        panel.poll(0.0)
        assert panel.shown[-1] == {"power": "on", "network": "off", "media": "off",
                                   "error": "fast"}
    finally:
        panel.close()
