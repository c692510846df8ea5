"""The README's front-panel section says what the code does."""

from __future__ import annotations

import re

from dicombox.config.panel import PanelSection
from dicombox.panel.table import button_table_markdown, led_table_markdown

from helpers import REPO

README = (REPO / "README.md").read_text()


def test_readme_led_and_button_tables_match_the_code():
    assert led_table_markdown() in README, "regenerate with python -m dicombox.panel.table"
    assert button_table_markdown() in README, "regenerate with python -m dicombox.panel.table"


def test_readme_wiring_matches_the_default_pins():
    defaults = PanelSection()
    for part, pin in (("power LED", defaults.power_led), ("network LED", defaults.network_led),
                      ("media LED", defaults.media_led), ("error LED", defaults.error_led),
                      ("button", defaults.button)):
        assert re.search(rf"^\| {part} \| {pin} \|", README, re.M), part
