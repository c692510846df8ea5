import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import BoxProcess, require, write_config  # noqa: E402,F401


@pytest.fixture
def box(tmp_path):
    """Start services of the box for real; every process is stopped in teardown."""
    started: list[BoxProcess] = []

    def start(service="router", config=None, wait=True, netns=None, **sections):
        cfg = config or write_config(tmp_path, **sections)
        proc = BoxProcess(service, cfg, prefix=netns.prefix() if netns else None)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for p in started:
        p.stop(timeout=30)


@pytest.fixture
def netns():
    """A private network namespace with only loopback; peers that bind every
    address (Orthanc, storescp, dcmjs-dimse) run in it, and so does the box."""
    from peers import NetNS
    ns = NetNS()
    yield ns
    ns.close()
