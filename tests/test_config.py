"""A bad configuration file stops start-up with one line naming the key."""

import subprocess

import pytest

from dicombox import config

from helpers import DICOMBOX, to_toml, write_config


def _check(path):
    return subprocess.run([*DICOMBOX, "config", "check", str(path)], capture_output=True,
                          text=True)


BAD = [
    ({"router": {"port": 70000}}, "router.port", "between 1 and 65535"),
    ({"router": {"port": "104"}}, "router.port", "must be an integer"),
    ({"router": {"portt": 104}}, "router.portt", "unknown key"),
    ({"routr": {"port": 104}}, "routr", "unknown key"),
    ({"router": {"ae_title": "THIS_IS_TOO_LONG_FOR_AN_AE"}}, "router.ae_title",
     "not a valid AE title"),
    ({"mpps": {"ae_title": "DICOMBOX"}}, "mpps.ae_title", "already used by router"),
    ({"media": {"port": 0}}, "media.port", "between 1 and 65535"),
    ({"box": {"state_dir": "a-file/state"}}, "box.state_dir", "is not a directory"),
    ({"box": {"listen_address": "not an address!"}}, "box.listen_address", "not an IP"),
    ({"storage": {"duplicates": "merge"}}, "storage.duplicates", "one of"),
    ({"storage": {"transfer_syntaxes": ["ExplicitVRLittleEndian", "Bogus"]}},
     "storage.transfer_syntaxes", "unknown transfer syntax 'Bogus'"),
    ({"storage": {"reserve_mb": -1}}, "storage.reserve_mb", "at least 0"),
    ({"router": {"allowed_peers": ["10.0.0.0/33"]}}, "router.allowed_peers",
     "not an IP address or network"),
    ({"network": {"acse_timeout": True}}, "network.acse_timeout", "must be a number"),
]


@pytest.mark.parametrize("sections,key,problem", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_file_is_one_line_naming_the_key(tmp_path, sections, key, problem):
    (tmp_path / "a-file").write_text("")
    path = write_config(tmp_path, **sections)
    r = _check(path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{path}: {key}: " in lines[0]
    assert problem in lines[0]
    assert "Traceback" not in r.stderr


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[router\nport = 1\n")
    r = _check(path)
    assert r.returncode != 0
    assert "not valid TOML" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_file(tmp_path):
    r = _check(tmp_path / "absent.toml")
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_serve_refuses_a_bad_file(tmp_path):
    path = write_config(tmp_path, router={"port": -5})
    r = subprocess.run([*DICOMBOX, "--config", str(path), "serve", "router"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "router.port" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_good_file_and_embedded_default(tmp_path):
    path = write_config(tmp_path)
    assert _check(path).returncode == 0
    cfg = config.load("embedded")
    assert (cfg.router.ae_title, cfg.router.port) == ("DICOMBOX", 11112)
    assert (cfg.mpps.ae_title, cfg.mpps.port) == ("DICOMBOX_PPS", 11113)
    assert (cfg.media.ae_title, cfg.media.port) == ("DICOMBOX_CD", 11114)
    assert cfg.box.listen_address == "127.0.0.1"


def test_relative_paths_are_relative_to_the_file(tmp_path):
    path = write_config(tmp_path / "etc")
    assert config.load(path).box.state_dir == (tmp_path / "etc" / "state")


def test_reference_lists_every_key():
    keys = [row[0] for row in config.reference(config.Config)]
    assert "router.ae_title" in keys and "storage.reserve_mb" in keys
    assert len(keys) == len(set(keys))


def test_to_toml_roundtrip(tmp_path):
    data = {"router": {"allowed_calling_aets": ["A", "B"]}}
    path = tmp_path / "x.toml"
    path.write_text(to_toml(data))
    assert config.load(path).router.allowed_calling_aets == ("A", "B")
