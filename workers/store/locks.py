"""Per-target locks in Redis with a TTL and a heartbeat.

A lock is a key holding a random token; only the holder's token may extend or release it,
so a run that lost its lock (it stalled past the TTL) cannot free someone else's.  After a
crash nobody heartbeats and the lock expires by itself: no stale lock survives a crash.
A step delivered again after its worker died takes back its expired locks (`reclaim`)
if nobody else took them meanwhile.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import redis

from workers.errors import LockBusy

PREFIX = "xiehe:lock:"
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0"""
_RECLAIM = """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not held then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0 end
return 0"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0"""


def lock_key(target: str) -> str:
    return PREFIX + target


def holder(client: redis.Redis, target: str) -> str | None:
    value = client.get(lock_key(target))
    return value.decode().split(":", 1)[0] if value else None


def acquire(client: redis.Redis, targets: Iterable[str], owner: str, ttl: int, wait: float) -> dict:
    """Take every target's lock or none: {target: token}.  Waits up to `wait` seconds."""
    targets = sorted(set(targets))  # a fixed order: two runs never deadlock each other
    deadline = time.monotonic() + wait
    taken: dict[str, str] = {}
    try:
        for target in targets:
            token = f"{owner}:{secrets.token_hex(8)}"
            while not client.set(lock_key(target), token, nx=True, ex=ttl):
                if time.monotonic() >= deadline:
                    raise LockBusy(
                        f"{target} is locked by run {holder(client, target) or '?'}; "
                        "another backup or restore of it is running"
                    )
                time.sleep(0.5)
            taken[target] = token
    except BaseException:
        release(client, taken)
        raise
    return taken


def extend(client: redis.Redis, locks: dict, ttl: int) -> list[str]:
    """Extend every lock still ours; return the targets whose lock was lost."""
    return _run_each(client, _EXTEND, locks, ttl)


def reclaim(client: redis.Redis, locks: dict, ttl: int) -> list[str]:
    """Extend our locks, taking back those that expired; return the targets another took."""
    return _run_each(client, _RECLAIM, locks, ttl)


def _run_each(client: redis.Redis, source: str, locks: dict, ttl: int) -> list[str]:
    script = client.register_script(source)
    return [
        t for t, token in locks.items() if not script(keys=[lock_key(t)], args=[token, ttl * 1000])
    ]


def release(client: redis.Redis, locks: dict) -> None:
    script = client.register_script(_RELEASE)
    for target, token in locks.items():
        script(keys=[lock_key(target)], args=[token])


@contextmanager
def heartbeat(client: redis.Redis, locks: dict, ttl: int) -> Iterator[list[str]]:
    """Keep `locks` alive while the body runs; the yielded list collects lost targets."""
    lost: list[str] = []
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl / 3):
            try:
                lost.extend(extend(client, locks, ttl))
            except redis.RedisError:
                pass  # the broker may be restarting; the next beat retries before the TTL

    thread = threading.Thread(target=beat, daemon=True, name="lock-heartbeat")
    if locks:
        thread.start()
    try:
        yield lost
    finally:
        stop.set()
        if locks:
            thread.join()
