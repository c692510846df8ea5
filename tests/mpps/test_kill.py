"""kill -9 of the mpps service between N-CREATE and N-SET, and during relay:
nothing acknowledged is lost and the order per procedure step holds."""

from mppskit import (
    mpps_peers_fixture,  # noqa: F401 - the mpps_peers fixture
    mpps_port,
    n_create,
    n_set_completed,
    send_mpps,
    wait_for,
)

from helpers import free_port

STEPS = ["1.2.826.0.1.3680043.8.498.301", "1.2.826.0.1.3680043.8.498.302"]


def ris_only(port):
    return {"destinations": [{"name": "ris", "role": "order-filler", "ae_title": "RIS",
                              "host": "127.0.0.1", "port": port}],
            "retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}


def collapse(seq):
    """Consecutive repeats removed: at-least-once delivery may resend the message
    that was in flight when the process died."""
    out = []
    for x in seq:
        if not out or out[-1] != x:
            out.append(x)
    return out


def test_kill_between_n_create_and_n_set(box, netns, mpps_peers, tmp_path):
    ris_port = free_port()
    proc = box("mpps", netns=netns, mpps=ris_only(ris_port))
    port = mpps_port(proc)
    uid = STEPS[0]
    r = send_mpps(port, [{"op": "create", "uid": uid, "dataset": n_create()}], tmp_path,
                  ns=netns)
    assert r[0]["status"] == 0
    proc.kill()
    proc = box("mpps", config=proc.config, netns=netns)
    # The step survived: the N-SET finds it IN PROGRESS and completes it.
    r = send_mpps(port, [{"op": "set", "uid": uid, "dataset": n_set_completed()}], tmp_path,
                  ns=netns)
    assert r[0]["status"] == 0
    ris = mpps_peers(netns, tmp_path / "ris", "RIS", port=ris_port)
    wait_for(lambda: len(ris.messages()) >= 2, 60, "the order filler")
    assert [(m["op"], m["uid"], m["status"]) for m in ris.messages()] == [
        ("N-CREATE", uid, 0), ("N-SET", uid, 0)]
    assert ris.messages()[1]["dataset"]["PerformedProcedureStepStatus"] == "COMPLETED"


def test_kill_during_relay(box, netns, mpps_peers, tmp_path):
    ris = mpps_peers(netns, tmp_path / "ris", "RIS", extra=["--delay-ms", "700"])
    proc = box("mpps", netns=netns, mpps=ris_only(ris.port))
    port = mpps_port(proc)
    for uid in STEPS:
        r = send_mpps(port, [
            {"op": "create", "uid": uid, "dataset": n_create()},
            {"op": "set", "uid": uid, "dataset": {"PerformedProcedureStepDescription": "x"}},
            {"op": "set", "uid": uid, "dataset": n_set_completed()},
        ], tmp_path, ns=netns)
        assert [x["status"] for x in r] == [0, 0, 0]
    # The order filler has the first messages and answers slowly: kill mid-relay.
    wait_for(lambda: len(ris.messages()) >= 2, 60, "the relay to start")
    proc.kill()
    assert len(ris.messages()) < 6
    box("mpps", config=proc.config, netns=netns)

    def complete():
        got = {uid: collapse([(m["op"], m["dataset"].get("PerformedProcedureStepStatus"))
                              for m in ris.messages() if m["uid"] == uid])
               for uid in STEPS}
        return all(len(v) >= 3 for v in got.values()) and got

    got = wait_for(complete, 90, "every message after the restart")
    for uid in STEPS:
        assert got[uid] == [("N-CREATE", "IN PROGRESS"), ("N-SET", None),
                            ("N-SET", "COMPLETED")]
    # The peer never saw an N-SET before its N-CREATE (it would answer 0112).
    assert all(m["status"] != 0x0112 for m in ris.messages())
