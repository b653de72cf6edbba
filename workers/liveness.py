"""Which queues live workers consume: each worker announces its own, producers ask.

A producer refuses to enqueue a run that no worker would take.  Celery's broadcast ping
answers that poorly: any worker on the broker replies, also one that consumes other queues
(the Docker host's worker down, the shared one up: a backup waited forever at its volume
step), and it costs every command a round of the control machinery (25-35 ms here).
Instead, each worker's consumer records every EVERY seconds that it consumes its queues,
in one sorted set per queue scored by the broker's clock, so hosts whose clocks differ
agree; a producer counts the members heard within STALE seconds, in one round trip.  A
worker stopping withdraws at once; one killed outright is stale after STALE seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from celery import bootsteps

KEY = "xiehe:consumers:"
EVERY = 1.0  # seconds between two announcements of a worker (one EVAL each)
STALE = 5  # seconds without one: that worker is gone (five announcements missed)
log = logging.getLogger("xiehe.liveness")

# KEYS: the queues' sets; ARGV: the worker, STALE.  Members long gone are dropped here.
_ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 100 * tonumber(ARGV[2]))
  redis.call('EXPIRE', key, 100 * tonumber(ARGV[2]))
end
"""
# KEYS: the queues' sets; ARGV: STALE.  The workers heard from lately, per queue.
_HEARD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local heard = {}
for i, key in ipairs(KEYS) do
  heard[i] = redis.call('ZRANGEBYSCORE', key, now - tonumber(ARGV[1]), '+inf')
end
return heard
"""


def key(queue: str) -> str:
    return KEY + queue


def announce(client: redis.Redis, queues: Iterable[str], worker: str) -> None:
    keys = [key(q) for q in queues]
    if keys:
        client.eval(_ANNOUNCE, len(keys), *keys, worker, STALE)


def withdraw(client: redis.Redis, queues: Iterable[str], worker: str) -> None:
    with client.pipeline() as pipe:
        for queue in queues:
            pipe.zrem(key(queue), worker)
        pipe.execute()


def consumers(client: redis.Redis, queues: Iterable[str]) -> dict[str, list[str]]:
    """Each queue's workers heard from within STALE seconds."""
    queues = list(dict.fromkeys(queues))
    if not queues:
        return {}
    heard = client.eval(_HEARD, len(queues), *map(key, queues), STALE)
    return {q: sorted(w.decode() for w in names) for q, names in zip(queues, heard, strict=True)}


def unserved(client: redis.Redis, queues: Iterable[str]) -> list[str]:
    """The queues no live worker consumes."""
    return [q for q, names in consumers(client, queues).items() if not names]


class Announce(bootsteps.StartStopStep):
    """The worker's consumer announces its queues on the consumer's own timer: a consumer
    that stopped taking messages (its loop stuck, its process gone) stops announcing."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.client: redis.Redis | None = None
        self.timer_ref = None
        self.queues: list[str] = []

    def start(self, parent) -> None:
        # Short timeouts: the announcement runs in the consumer's loop, which must not
        # wait on a broker that went away (the consumer reconnects on its own).
        self.client = redis.Redis.from_url(
            parent.app.conf.broker_url, socket_timeout=1, socket_connect_timeout=1
        )
        self._beat(parent)
        self.timer_ref = parent.timer.call_repeatedly(EVERY, self._beat, (parent,))

    def _beat(self, parent) -> None:
        client = self.client
        if client is None:  # stopped while the timer fired
            return
        queues = sorted(q.name for q in parent.task_consumer.queues)
        try:
            if set(queues) != set(self.queues):  # a queue dropped at runtime (cancel_consumer)
                withdraw(client, set(self.queues) - set(queues), parent.hostname)
            announce(client, queues, parent.hostname)
            self.queues = queues
        except redis.RedisError as exc:
            log.debug("queues not announced: %s", exc)

    def stop(self, parent) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        if self.client is not None:
            try:
                withdraw(self.client, self.queues, parent.hostname)
            except redis.RedisError as exc:
                log.debug("queues not withdrawn: %s", exc)
            self.client.close()
            self.client = None

    shutdown = stop
