"""Connections to a Redis server: clients, errors with the password scrubbed, its state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import redis
from redis.connection import parse_url

from workers.config import RedisSettings
from workers.errors import TargetError

READ_TIMEOUT = 120  # s without a byte from the master (it sends "\n" keepalives every second)
READY_TIMEOUT = 600  # s for a (re)started server to load its RDB
STOP_TIMEOUT = 60  # s for Redis to shut down cleanly (it may fsync or save on SIGTERM)


def where(url: str) -> str:
    """host:port or socket path: how a message names the server, without credentials."""
    opts = parse_url(url)
    return opts.get("path") or f"{opts.get('host', 'localhost')}:{opts.get('port', 6379)}"


def client(url: str, db: int | None = None) -> redis.Redis:
    """A client for url; db overrides the URL's db (redis-py's from_url would ignore it)."""
    opts = parse_url(url)
    if db is not None:
        opts["db"] = db
    pool = redis.ConnectionPool(socket_timeout=READ_TIMEOUT, socket_connect_timeout=10, **opts)
    return redis.Redis(connection_pool=pool)


@contextmanager
def errors(url: str, doing: str) -> Iterator[None]:
    """Turn a Redis failure into TargetError, with the URL's password scrubbed."""
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        password = parse_url(url).get("password")
        if password:
            message = message.replace(password, "***")
        raise TargetError("redis", f"{doing} at {where(url)}: {message}") from None


def keyspace(server: redis.Redis) -> dict[int, int]:
    """{db index: number of keys} for every non-empty db."""
    return {int(db[2:]): v["keys"] for db, v in server.info("keyspace").items()}


def text(value: str | bytes) -> str:
    """A reply as str, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value


def config(server: redis.Redis, name: str) -> str | None:
    """CONFIG GET name, or None when this Redis has no such setting."""
    found = {text(k): text(v) for k, v in server.config_get(name).items()}
    return found.get(name)


def check(settings: RedisSettings) -> dict:
    """Reachability, version, key counts, memory, AOF state and (if allowed) the RDB dir."""
    server = client(settings.url)
    with errors(settings.url, "cannot reach Redis"):
        out = {
            "redis_version": server.info("server")["redis_version"],
            "keys": keyspace(server),
            "used_memory": server.info("memory")["used_memory"],
            "aof": bool(server.info("persistence")["aof_enabled"]),
        }
        with suppress(redis.ResponseError):  # CONFIG renamed or denied: not fatal for a check
            out["rdb_dir"] = config(server, "dir")
    return out


def reachable(server: redis.Redis) -> bool:
    """Whether anything answers at all (an error reply counts: the server is up)."""
    try:
        return bool(server.ping())
    except redis.ResponseError:  # e.g. LOADING, NOAUTH: something answers
        return True
    except (redis.RedisError, OSError):
        return False


def wait_ready(url: str, failed: Callable[[], str | None]) -> redis.Redis:
    """Wait until Redis answers PING and has loaded its data (INFO loading:0)."""
    server = client(url)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if server.ping() and server.info("persistence")["loading"] == 0:
                return server
        except (redis.ConnectionError, redis.TimeoutError):  # starting, or BusyLoadingError
            pass
        reason = failed()
        if reason:
            raise TargetError("redis", reason)
        time.sleep(0.2)
    raise TargetError("redis", f"{where(url)} did not load its data within {READY_TIMEOUT} s")
