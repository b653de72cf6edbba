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

glibc's rising thresholds do not settle either: its trim threshold follows at twice the
largest block freed, so a freed block of a few MiB at the heap's top is given back at once
and the next is faulted in anew.  Reading back a volume artifact of the reference set (210
MB of plaintext in 1 MiB chunks and larger) took 0.30 s and 249,000 page faults that way,
every run alike.  So both are fixed: blocks up to 4 MiB come from the heap, and up to 16
MiB of its top is kept while a step runs: 0.15-0.17 s and 12,000 faults (32 and 64 MiB did
no better, and left the worker's tree 30-60 MB larger), and a whole volume restore
1.3 s instead of 2.7 s.  What a step freed still goes back when it ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


# mallopt's parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (nothing of this applies there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc's own
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def configure() -> bool:
    """Set up this worker process's allocator; False where it is not glibc's.

    At most ARENAS arenas: glibc gives each thread that allocates an arena of its own (up
    to eight per core), and each keeps the blocks freed in it.  With two, an end-to-end
    backup of the reference set peaked at 241-256 MB for the worker's tree instead of
    272-280 MB (idle after it: 149-156 MB instead of 187-197 MB), in the same time."""
    libc = _libc()
    settings = (
        (M_ARENA_MAX, ARENAS),
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    if libc is None or not all(libc.mallopt(param, value) for param, value in settings):
        log.info("memory: not glibc's allocator; freed memory stays for reuse")
        return False
    log.info(
        "memory: %d arenas; what a step freed is given back when it ends (till then, "
        "blocks up to %d MiB come from the heap and stay there)",
        ARENAS,
        MMAP_THRESHOLD >> 20,
    )
    return True


def give_back() -> bool:
    """Return this process's free heap pages to the system; False without glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
