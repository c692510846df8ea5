import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from container import Container, debian_12_root, nspawn_problem  # noqa: E402


@pytest.fixture
def container(tmp_path):
    """A booted systemd container with the box's units; always powered off.

    Skipped only where systemd-nspawn cannot work (not root, no systemd);
    on a Debian 12 machine run as root, as CI is, a missing tool fails."""
    problem = nspawn_problem()
    if problem:
        if debian_12_root():
            pytest.fail(f"systemd-nspawn should work here: {problem}")
        pytest.skip(problem)
    box = Container(tmp_path)
    try:
        yield box.boot()
    finally:
        box.close()
