"""Destinations, rules, forwarding and cleanup settings: bad ones are named in one line."""

import subprocess

import pytest

from dicombox import config

from helpers import DICOMBOX, write_config

PACS = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
ARCHIVE = {"name": "archive", "ae_title": "ARCHIVE", "host": "10.0.0.2"}

BAD = [
    ({"destinations": [PACS, {**ARCHIVE, "name": "pacs"}]}, "destinations[1].name",
     "duplicate destination name 'pacs'"),
    ({"destinations": [PACS], "rules": [{"name": "r", "destinations": ["nope"]}]},
     "rules[0].destinations[0]", "unknown destination 'nope' (destinations: pacs)"),
    ({"destinations": [PACS], "rules": [{"name": "r", "destinations": ["pacs"]},
                                        {"name": "r", "destinations": ["pacs"]}]},
     "rules[1].name", "duplicate rule name 'r'"),
    ({"destinations": [PACS], "rules": [{"name": "r", "destinations": ["pacs", "pacs"]}]},
     "rules[0].destinations", "listed twice"),
    ({"destinations": [PACS], "forwarding": {"default_destinations": ["archive"]}},
     "forwarding.default_destinations[0]", "unknown destination 'archive'"),
    ({"destinations": [PACS], "rules": [{"name": "r", "study_description": "CT(("}]},
     "rules[0].study_description", "not a valid regular expression"),
    ({"destinations": [PACS], "rules": [{"name": "r", "sop_classes": ["1.2.x"]}]},
     "rules[0].sop_classes", "not a valid UID"),
    ({"destinations": [PACS], "rules": [{"name": "r", "calling_aets": ["A" * 17]}]},
     "rules[0].calling_aets", "not a valid AE title"),
    ({"destinations": [PACS], "rules": [{"name": "r", "modality": ["CT"]}]},
     "rules[0].modality", "unknown key"),
    ({"destinations": [{**PACS, "transfer_syntaxes": ["JPEGBogus"]}]},
     "destinations[0].transfer_syntaxes", "unknown transfer syntax 'JPEGBogus'"),
    ({"destinations": [{**PACS, "transfer_syntaxes": []}]},
     "destinations[0].transfer_syntaxes", "at least one transfer syntax"),
    ({"destinations": [{**PACS, "max_associations": 0}]},
     "destinations[0].max_associations", "at least 1"),
    ({"destinations": [{**PACS, "name": "has space"}]}, "destinations[0].name",
     "not a valid name"),
    ({"destinations": [{**PACS, "calling_ae_title": "BAD\\AE"}]},
     "destinations[0].calling_ae_title", "not a valid AE title"),
    ({"destinations": [{k: v for k, v in PACS.items() if k != "host"}]},
     "destinations[0].host", "is required"),
    ({"forwarding": {"rule_mode": "some"}}, "forwarding.rule_mode", "one of 'first', 'all'"),
    ({"forwarding": {"retry_initial": 60, "retry_max": 10}}, "forwarding.retry_max",
     "at least retry_initial"),
    ({"cleanup": {"red_zone_mb": 1000, "green_zone_mb": 500}}, "cleanup.green_zone_mb",
     "at least red_zone_mb"),
    ({"cleanup": {"max_age_hours": -1}}, "cleanup.max_age_hours", "at least 0"),
]


@pytest.mark.parametrize("sections,key,problem", BAD, ids=[b[1] for b in BAD])
def test_bad_setting_names_the_key(tmp_path, sections, key, problem):
    path = write_config(tmp_path, **sections)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert err.value.key == key
    assert problem in err.value.problem


def test_config_check_prints_one_line(tmp_path):
    path = write_config(tmp_path, destinations=[PACS],
                        rules=[{"name": "ct", "destinations": ["archive"]}])
    r = subprocess.run([*DICOMBOX, "config", "check", str(path)], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"dicombox: configuration error: {path}: rules[0].destinations[0]: unknown "
        "destination 'archive' (destinations: pacs)"]


def test_a_full_forwarding_configuration_loads(tmp_path):
    path = write_config(
        tmp_path,
        destinations=[{**PACS, "transfer_syntaxes": ["JPEGLosslessSV1",
                                                     "1.2.840.10008.1.2.1"],
                       "max_associations": 4, "calling_ae_title": "BOX_OUT"},
                      {**ARCHIVE, "lossy": True, "offer_stored": False,
                       "transfer_syntaxes": ["JPEG2000"]}],
        rules=[{"name": "ct", "modalities": ["CT"], "calling_aets": ["CT1", "CT2"],
                "study_description": "(?i)thorax", "destinations": ["pacs", "archive"]},
               {"name": "drop-sr", "sop_classes": ["1.2.840.10008.5.1.4.1.1.88.11"]}],
        forwarding={"rule_mode": "all", "default_destinations": ["archive"]},
        cleanup={"max_age_hours": 48, "red_zone_mb": 2000, "green_zone_mb": 4000})
    cfg = config.load(path)
    assert cfg.destinations[0].transfer_syntax_uids() == ("1.2.840.10008.1.2.4.70",
                                                          "1.2.840.10008.1.2.1")
    assert cfg.destinations[1].max_associations == 2
    assert cfg.rules[1].destinations == ()
    assert cfg.forwarding.rule_mode == "all"
    assert cfg.cleanup.green_zone_mb == 4000
