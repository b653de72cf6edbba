"""One run at a time per remote: uploads, remote retention and fetches never interleave
(a prune must not delete what an upload is completing).  A Redis lock with TTL and
heartbeat, as for targets: a crashed holder's lock expires."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workers.config import Settings
from workers.store import locks


@contextmanager
def holding(client: redis.Redis, settings: Settings, remote: str, owner: str) -> Iterator[None]:
    """Raises LockBusy when another run keeps the remote past XIEHE_LOCK_WAIT."""
    held = locks.acquire(
        client, [f"offsite:{remote}"], owner, settings.lock_ttl, settings.lock_wait
    )
    try:
        with locks.heartbeat(client, held, settings.lock_ttl):
            yield
    finally:
        locks.release(client, held)
