"""Give the memory a step freed back to the system, so a long-lived worker stays small.

glibc raises its mmap threshold each time a large block it mmapped is freed, up to 32 MiB:
after the first backup, the 1 MiB statements and chunks the steps pass between threads
come from its arenas instead, and what is freed there stays in the process.  A worker
child grew by about 20 MB a run that way (47 to 187 MB PSS over six end-to-end backups of
the 0.5 GB reference set, bench/).  A fixed threshold keeps such blocks mmapped, so each
is unmapped when freed; it also fixes the trim threshold, so free memory at the top of
the heap is returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 256 << 10  # bytes; blocks this large are mmapped (glibc starts at 128 KiB)


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process and the children it forks afterwards;
    False where the C library is not glibc (nothing to tune there)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.info("memory: the C library has no mallopt; its defaults stand")
        return False
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.warning("memory: glibc refused a fixed mmap threshold; its defaults stand")
        return False
    kib = MMAP_THRESHOLD >> 10
    log.info("memory: blocks from %d KiB are mmapped, and unmapped when freed", kib)
    return True
