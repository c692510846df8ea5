"""dicombox.memory: freed heap pages go back to the system."""

import ctypes
from pathlib import Path

from dicombox import memory


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_release_returns_the_pages_of_freed_holes():
    # Many small C allocations, every other one freed: holes that stay
    # resident until they are given back (what thousands of parsed headers do).
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(800)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    for b in blocks[::2]:
        libc.free(b)
    before = _rss_kb()
    assert memory.release()
    after = _rss_kb()
    try:
        assert before - after > 10_000, (before, after)
    finally:
        for b in blocks[1::2]:
            libc.free(b)


def test_release_every_counts():
    calls = []
    real, memory.release = memory.release, lambda: calls.append(1) or True
    try:
        for i in range(2 * memory.EVERY + 1):
            memory.release_every(i)
    finally:
        memory.release = real
    assert len(calls) == 2
