"""The [mpps] section: destinations, coercion, retries and notifications; bad values
are refused with one line naming the key, and `dicombox serve mpps` refuses to start."""

import subprocess

import pytest

from dicombox import config
from dicombox.config import ConfigError

from helpers import DICOMBOX, config_data, to_toml


def _load(tmp_path, **mpps):
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config_data(mpps=mpps)))
    return config.load(path)


def _dest(name="ris", role="order-filler", **kw):
    return {"name": name, "role": role, "ae_title": "RIS", "host": "127.0.0.1", "port": 104,
            **kw}


def test_destinations_and_notifications(tmp_path):
    cfg = _load(tmp_path, destinations=[
        _dest(), _dest("reports", "report-manager", strip_private=True,
                       remove=["PatientBirthDate", "(0009,1001)"])],
        notifications={"enabled": True, "kind": "scn", "quiet_seconds": 60})
    assert [d.role for d in cfg.mpps.destinations] == ["order-filler", "report-manager"]
    assert cfg.mpps.destinations[1].remove == ("PatientBirthDate", "(0009,1001)")
    assert cfg.mpps.notifications.kind == "scn"


@pytest.mark.parametrize("mpps,key,words", [
    ({"destinations": [_dest(), _dest("b"), _dest("c", "report-manager")]},
     "mpps.destinations", "at most two"),
    ({"destinations": [_dest(), _dest("b")]}, "mpps.destinations[1].role", "only one"),
    ({"destinations": [_dest(), _dest(role="report-manager")]}, "mpps.destinations[1].name",
     "duplicate"),
    ({"destinations": [_dest(role="archive")]}, "mpps.destinations[0].role", "one of"),
    ({"destinations": [_dest(remove=["NotAKeyword"])]}, "mpps.destinations[0].remove",
     "neither a DICOM keyword"),
    ({"notifications": {"kind": "hl7"}}, "mpps.notifications.kind", "one of"),
    ({"notifications": {"quiet_seconds": 0}}, "mpps.notifications.quiet_seconds", "at least"),
    ({"retry_initial_seconds": 10, "retry_max_seconds": 5}, "mpps.retry_max_seconds",
     "smaller"),
])
def test_bad_values_name_the_key(tmp_path, mpps, key, words):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **mpps)
    assert err.value.key == key and words in err.value.problem


def test_serve_refuses_a_bad_configuration_in_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config_data(mpps={"destinations": [_dest(port=70000)]})))
    r = subprocess.run([*DICOMBOX, "--config", str(path), "serve", "mpps"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "mpps.destinations[0].port" in r.stderr
