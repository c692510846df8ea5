"""Receive files created ahead (``dicombox.dimse.receive._Pool``): a writer
starts on a file that exists already, old ones are replaced before the
housekeeping could take them for stale, and none is left behind."""

import os
import time

import pytest

from dicombox.dimse import receive


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


@pytest.fixture
def pool(tmp_path):
    p = receive._Pool(str(tmp_path))
    p.start()
    yield p
    p.stop()
    p.join(5)


def _names(tmp_path):
    return {p.name for p in tmp_path.iterdir()}


def test_writers_start_on_files_created_ahead(tmp_path, pool):
    _wait(lambda: len(_names(tmp_path)) == receive.POOL_FILES)
    ahead = _names(tmp_path)
    writer = receive.SpoolWriter(tmp_path, pool=pool)
    assert os.path.basename(writer.name) in ahead
    writer.write(b"DICM" * 10)
    writer.close()
    assert os.path.getsize(writer.name) == 40
    # The pool makes up for the one taken.
    _wait(lambda: len(_names(tmp_path)) == receive.POOL_FILES + 1)
    # Another suffix is not the pool's.
    other = receive.SpoolWriter(tmp_path, suffix=".part", pool=pool)
    assert other.name.endswith(".part")
    other.close()


def test_old_files_are_replaced_not_handed_out(tmp_path, pool, monkeypatch):
    _wait(lambda: len(_names(tmp_path)) == receive.POOL_FILES)
    first = _names(tmp_path)
    monkeypatch.setattr(receive, "POOL_MAX_AGE", 0.2)
    time.sleep(0.25)
    # Too old to hand out: the writer creates its own file.
    writer = receive.SpoolWriter(tmp_path, pool=pool)
    assert os.path.basename(writer.name) not in first
    writer.close()
    # And the pool has replaced every old one.
    _wait(lambda: not (_names(tmp_path) & first))


def test_stop_removes_the_files_created_ahead(tmp_path):
    pool = receive._Pool(str(tmp_path))
    pool.start()
    _wait(lambda: len(_names(tmp_path)) == receive.POOL_FILES)
    taken = pool.take()
    assert taken is not None
    pool.stop()
    pool.join(5)
    assert not pool.is_alive()
    # Only the file handed out stays: its writer owns it.
    assert _names(tmp_path) == {os.path.basename(taken[1])}
    os.close(taken[0])
    assert pool.take() is None


def test_a_folder_that_cannot_take_files_leaves_writers_their_own_error(tmp_path):
    missing = tmp_path / "gone"
    pool = receive._Pool(str(missing))
    pool.start()
    try:
        time.sleep(0.1)
        assert pool.is_alive()
        assert pool.take() is None
        with pytest.raises(FileNotFoundError):
            receive.SpoolWriter(missing, pool=pool)
        # Once the folder is back, files are created ahead again.
        missing.mkdir()
        _wait(lambda: len(list(missing.iterdir())) == receive.POOL_FILES, timeout=5)
    finally:
        pool.stop()
        pool.join(5)
    assert not list(missing.iterdir())


def test_install_runs_one_pool_and_uninstall_empties_it(tmp_path):
    if not receive.install(tmp_path / "a"):
        pytest.skip("another pynetdicom version: the receive path is pynetdicom's own")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        _wait(lambda: len(list((tmp_path / "a").iterdir())) == receive.POOL_FILES)
        assert receive.install(tmp_path / "b")
        # The first folder's pool stopped and removed its files.
        _wait(lambda: not list((tmp_path / "a").iterdir()))
        _wait(lambda: len(list((tmp_path / "b").iterdir())) == receive.POOL_FILES)
    finally:
        receive.uninstall()
    assert not list((tmp_path / "b").iterdir())
