"""BGSAVE, and waiting for the server's save to end: never SAVE, which blocks the server."""

from __future__ import annotations

import time

import redis

from workers.errors import TargetError
from workers.targets.redis import connection as conn

SAVE_TIMEOUT = 3600  # s for a BGSAVE of a large dataset
CHILDREN = ("rdb_bgsave_in_progress", "aof_rewrite_in_progress", "module_fork_in_progress")
# A save's end is seen by polling INFO (~0.1 ms of Redis per poll), every POLL_SHARE of the
# time waited so far: at most that share late, within POLL_MIN..POLL_MAX seconds.
POLL_MIN, POLL_MAX, POLL_SHARE = 0.005, 0.1, 0.02


def poll_interval(waited: float) -> float:
    """Seconds to sleep before asking INFO again, after `waited` seconds of waiting."""
    return min(POLL_MAX, max(POLL_MIN, waited * POLL_SHARE))


def bgsave(client: redis.Redis) -> None:
    """BGSAVE (after any save already running) and wait until it wrote the RDB.

    Its end is the end of the running save in INFO, polled every few ms (LASTSAVE counts
    whole seconds: waiting for it to tick cost up to a second per snapshot)."""
    deadline = time.monotonic() + SAVE_TIMEOUT
    start_bgsave(client, deadline)
    saved(wait_idle(client, deadline, ("rdb_bgsave_in_progress",)))


def start_bgsave(client: redis.Redis, deadline: float) -> None:
    """BGSAVE, after any save or rewrite already running: returns once our fork runs."""
    client.set_response_callback("BGSAVE", lambda reply, **_: conn.text(reply))
    while True:
        try:
            if "started" in client.bgsave(schedule=True):
                return
        except redis.ResponseError as exc:
            if "already in progress" not in str(exc):
                raise
            # Another save (maybe a replica's, to a socket) began before us: ours after it.
        # Not started (scheduled after an AOF rewrite, or refused): ask again once no child
        # runs; a scheduled save that began meanwhile refuses ours until it ends.
        wait_idle(client, deadline, CHILDREN)


def saved(info: dict) -> None:
    """Raise unless the last save (seen ended in `info`, INFO persistence) succeeded."""
    if info["rdb_last_bgsave_status"] != "ok":
        raise TargetError("redis", "BGSAVE failed: see the Redis log (disk full?)")


def wait_idle(client: redis.Redis, deadline: float, running: tuple[str, ...]) -> dict:
    """Poll INFO persistence until none of its `running` flags is set; return that INFO."""
    start = time.monotonic()
    while True:
        info = client.info("persistence")
        if not any(info.get(flag) for flag in running):
            return info
        now = time.monotonic()
        if now > deadline:
            raise TargetError("redis", f"BGSAVE did not finish within {SAVE_TIMEOUT} s")
        time.sleep(poll_interval(now - start))
