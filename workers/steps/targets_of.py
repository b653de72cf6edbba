"""Which targets a run touches, and the lock name of each (shared by backup and restore)."""

from __future__ import annotations

from urllib.parse import urlparse

from workers.config import Settings
from workers.context import StepContext
from workers.ops import inuse
from workers.store import locks


def mysql_lock(settings: Settings) -> str:
    return f"mysql:{settings.mysql.host}:{settings.mysql.port}"


def redis_lock(settings: Settings) -> str:
    url = urlparse(settings.redis.url)
    return f"redis:{url.hostname}:{url.port or 6379}"


def volume_lock(name: str) -> str:
    return f"volume:{name}"


def lock_names(settings: Settings, kinds: list[str], volumes: list[str]) -> list[str]:
    names = []
    if "mysql" in kinds:
        names.append(mysql_lock(settings))
    if "redis" in kinds:
        names.append(redis_lock(settings))
    if "volumes" in kinds:
        names += [volume_lock(v) for v in volumes]
    return names


def lock_targets(
    ctx: StepContext, run: dict, kinds: list[str], volumes: list[str], reading: str = ""
) -> dict:
    """Take the lock of every target the run touches, as the run; {target: token}.
    `reading`: a backup the run reads from, held too, so that no prune deletes it meanwhile
    (the restore's own safety backup prunes, and the backup restored may be the oldest)."""
    settings = ctx.settings
    held = [inuse.target(reading)] if reading else []
    return locks.acquire(
        ctx.broker,
        lock_names(settings, kinds, volumes) + held,
        run["id"],
        settings.lock_ttl,
        wait=float(settings.lock_wait),
    )
