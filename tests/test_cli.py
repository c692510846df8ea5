"""`dicombox status`, `spool list/show` and `serve all`, run as an operator would."""

import json
import signal
import subprocess
import time

from datagen import cr_image, ct_series
from helpers import DICOMBOX, dcmtk, require, write_config


def _cli(cfg, *args):
    return subprocess.run([*DICOMBOX, "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60)


def test_status_and_spool_commands(box, tmp_path):
    require("storescu")
    router = box("router")
    cfg = router.config
    port = cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0]
    ct = ct_series(tmp_path / "ct", 3, patient=("Smith^Anna", "PAT42"))
    cr = cr_image(tmp_path / "cr")
    assert dcmtk("storescu", "-aet", "CT_SCANNER", "-aec", "DICOMBOX", "127.0.0.1", port,
                 *ct).returncode == 0
    assert dcmtk("storescu", "-aet", "CR_ROOM", "-aec", "DICOMBOX", "127.0.0.1", port,
                 cr).returncode == 0

    r = _cli(cfg, "spool", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 4
    r = _cli(cfg, "spool", "list", "--patient", "smith", "--json")
    assert {x["patient_id"] for x in json.loads(r.stdout)} == {"PAT42"}
    r = _cli(cfg, "spool", "list", "--aet", "CR_ROOM", "--json")
    assert len(json.loads(r.stdout)) == 1
    r = _cli(cfg, "spool", "list", "--since", "2999-01-01", "--json")
    assert json.loads(r.stdout) == []
    r = _cli(cfg, "spool", "list", "--studies")
    assert r.returncode == 0 and "PAT42" in r.stdout and "Smith^Anna" in r.stdout
    r = _cli(cfg, "spool", "list", "--since", "yesterday")
    assert r.returncode == 2 and "cannot read the date" in r.stderr

    uid = rows[0]["sop_instance_uid"]
    r = _cli(cfg, "spool", "show", uid)
    assert r.returncode == 0 and uid in r.stdout and "sha256" in r.stdout
    r = _cli(cfg, "spool", "show", "1.2.3.404")
    assert r.returncode == 1 and "no instance 1.2.3.404" in r.stderr

    deadline = time.monotonic() + 20
    while True:
        r = _cli(cfg, "status", "--json")
        status = json.loads(r.stdout)
        router_state = status["services"]["router"]
        if router_state.get("state", {}).get("counters", {}).get("stored") == 4:
            break
        assert time.monotonic() < deadline, r.stdout
        time.sleep(0.5)
    assert router_state["running"] is True
    assert router_state["spool"] == {"instances": 4, "bytes": router_state["spool"]["bytes"],
                                     "studies": 2}
    r = _cli(cfg, "status")
    assert "router   running" in r.stdout and "4 instances in 2 studies" in r.stdout


def test_status_without_any_state(tmp_path):
    cfg = write_config(tmp_path)
    r = _cli(cfg, "status")
    assert r.returncode == 0 and "stopped" in r.stdout
    r = _cli(cfg, "spool", "list")
    assert r.returncode == 1 and "no router index" in r.stderr


def test_serve_all_runs_the_router_and_stops_on_sigint(tmp_path):
    require("echoscu")
    cfg = write_config(tmp_path)
    port = cfg.read_text().split("[router]")[1].split("port = ")[1].split()[0]
    proc = subprocess.Popen([*DICOMBOX, "--config", str(cfg), "serve", "all"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while dcmtk("echoscu", "-aec", "DICOMBOX", "127.0.0.1", port).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "all services stopped" in out
    assert "Traceback" not in out
