"""Every key of a Redis server, normalised for comparison: what tests and drills check a
restore against."""

from __future__ import annotations

import redis

from workers.errors import TargetError
from workers.targets.redis import connection as conn


def _value(client: redis.Redis, kind: str, key: bytes):
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return sorted(client.smembers(key))
    if kind == "zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return client.xrange(key)
    raise TargetError("redis", f"dump_keys: unsupported type {kind} for {key!r}")


def dump_keys(url: str) -> dict[int, dict[bytes, tuple[str, object, float | None]]]:
    """{db: {key: (type, normalised value, ttl in seconds or None)}} of every key."""
    out: dict[int, dict[bytes, tuple[str, object, float | None]]] = {}
    with conn.errors(url, "cannot dump keys"):
        for db in conn.keyspace(conn.client(url)):
            client = conn.client(url, db)
            keys = {}
            for key in client.scan_iter(count=1000):
                kind = client.type(key).decode()
                ttl = client.pttl(key)
                keys[key] = (kind, _value(client, kind, key), ttl / 1000 if ttl >= 0 else None)
            out[db] = keys
    return out
