import pytest
from fwdkit import Peers

from helpers import require


@pytest.fixture
def peers(netns, tmp_path):
    """Destinations (Orthanc, storescp) in the test's namespace, stopped in teardown."""
    require("Orthanc", "storescp", "storescu", "curl")
    p = Peers(netns, tmp_path)
    yield p
    p.close()
