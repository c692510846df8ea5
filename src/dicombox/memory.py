"""Giving the heap's free pages back to the system between the steps of a long job.

A media job reads thousands of headers: each leaves its transient objects
freed between the few it keeps (a directory record, a manifest line), and
the C library keeps the pages of those holes.  The service's resident
memory then follows the number of instances even though what is alive
does not.  glibc's ``malloc_trim(0)`` returns every free page of every heap
(about 5 MB after the headers of 10 000 instances); it takes a
millisecond or two, so it is called every :data:`EVERY` instances and
after each step.  Elsewhere (another C library) it does nothing.
"""

from __future__ import annotations

import ctypes

#: Instances between two releases inside a job's loops.
EVERY = 1000


def _malloc_trim():
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def release() -> bool:
    """Return the heap's free pages to the system; False where that is not possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def release_every(count: int) -> None:
    """:func:`release` on every :data:`EVERY`-th ``count`` (a loop's counter)."""
    if count and count % EVERY == 0:
        release()
