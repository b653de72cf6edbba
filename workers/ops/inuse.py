"""A backup in use (being verified, drilled or restored) is never pruned under it.

The user holds the Redis lock `backup:<id>` (TTL + heartbeat, so a crash frees it);
prune claims the same lock, without waiting, before it deletes a backup.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workers.config import Settings
from workers.errors import BackupError, LockBusy
from workers.store import locks


def target(backup_id: str) -> str:
    return f"backup:{backup_id}"


def broker(settings: Settings) -> redis.Redis:
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BackupError(f"broker: cannot reach the queue's Redis ({exc})") from None
    return client


@contextmanager
def using(
    client: redis.Redis, backup_id: str, owner: str, ttl: int, wait: float = 30.0
) -> Iterator[None]:
    """Hold the backup for the block, heartbeating the lock."""
    held = locks.acquire(client, [target(backup_id)], owner, ttl, wait)
    try:
        with locks.heartbeat(client, held, ttl):
            yield
    finally:
        locks.release(client, held)


def try_claim(client: redis.Redis, backup_id: str, owner: str, ttl: int) -> dict | None:
    """The backup's lock if nobody holds it, else None."""
    try:
        return locks.acquire(client, [target(backup_id)], owner, ttl, wait=0)
    except LockBusy:
        return None
