"""Give the memory a step freed back to the system, so a long-lived worker stays small.

glibc keeps what is freed for reuse: its mmap threshold rises to the largest block freed
(up to 32 MiB), so after the first backup the 1 MiB statements and chunks the steps hand
between threads come from its heap and arenas, where small objects made meanwhile pin
them.  A worker child grew by about 20 MB a backup that way (47 to 187 MB PSS over six
end-to-end backups of the 0.5 GB reference set, bench/).  So after each step, glibc's
malloc_trim(0) gives back every free page of every arena (inside the heap too, not only at
its top); within a step, freed buffers are reused as glibc intends.

Fixing the mmap threshold at 256 KiB instead, so each such block was unmapped when freed,
kept the worker as small, but every block was then mapped and faulted in anew: a dump of
the reference set took 0.35 s more system CPU (1.08-1.18 s of CPU against 0.72-0.79 s) and
ended 0.15-0.2 s later.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim; None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def announce() -> None:
    """Say, once per worker process, whether freed memory will be given back."""
    if _malloc_trim():
        log.info("memory: what a step freed is given back to the system when it ends")
    else:
        log.info("memory: the C library has no malloc_trim; freed memory stays for reuse")


def give_back() -> bool:
    """Return this process's free heap pages to the system; False without glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
