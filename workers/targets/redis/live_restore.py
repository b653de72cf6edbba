"""Live mode's restore: the RDB loaded into a private throwaway redis-server, then every key
copied into the target with DUMP/RESTORE (the target keeps running; its data is replaced)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from workers.config import RedisSettings
from workers.store.codec import read_plain
from workers.targets.redis import connection as conn
from workers.targets.redis.rdb import RdbCheck
from workers.targets.redis.stream import Progress

REDIS_SERVER = "/usr/bin/redis-server"
BATCH = 500  # keys per DUMP/RESTORE pipeline round trip


def restore_live(
    settings: RedisSettings, artifact: Path, identity_file: Path | None, progress: Progress
) -> tuple[dict[int, int], dict]:
    """Every key of the artifact's RDB into the running target (flushed first); its key
    counts and the RDB's summary."""
    target = conn.client(settings.url)
    with conn.errors(settings.url, "cannot reach the target"):
        databases = int(conn.config(target, "databases") or 16)
    with (
        _temp_server(artifact, identity_file, databases) as (source, summary),
        conn.errors(settings.url, "restore into the target failed"),
    ):
        target.flushall()
        _copy_keys(source, settings.url, progress)
        return conn.keyspace(target), summary


def _unpack(artifact: Path, identity_file: Path | None, dest: Path) -> dict:
    """Decompress the artifact to dest (0600), checking the RDB as it goes."""
    check = RdbCheck()
    with open(dest, "xb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        for chunk in read_plain(artifact, identity_file):
            check.update(chunk)
            out.write(chunk)
    return check.finish()


@contextmanager
def _temp_server(
    artifact: Path, identity_file: Path | None, databases: int
) -> Iterator[tuple[str, dict]]:
    """A throwaway redis-server holding the artifact's data, reachable only through a unix
    socket in a 0700 dir (no TCP port: other local users cannot read the data)."""
    tmp = Path(tempfile.mkdtemp(prefix="xiehe-redis-"))  # mkdtemp makes it 0700
    proc = None
    try:
        summary = _unpack(artifact, identity_file, tmp / "dump.rdb")
        sock = tmp / "redis.sock"
        conf = tmp / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(
            f'port 0\nunixsocket "{sock}"\nunixsocketperm 700\ndir "{tmp}"\n'
            f'dbfilename dump.rdb\nsave ""\nappendonly no\ndatabases {max(databases, 16)}\n'
            f'logfile "{tmp}/redis.log"\n'
        )
        proc = subprocess.Popen([REDIS_SERVER, str(conf)], stdin=subprocess.DEVNULL)
        url = f"unix://{sock}"
        conn.wait_ready(url, lambda: _server_gone(proc, tmp))
        yield url, summary
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(conn.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _server_gone(proc: subprocess.Popen, tmp: Path) -> str | None:
    if proc.poll() is None:
        return None
    log = (tmp / "redis.log").read_text(errors="replace").strip().splitlines()[-3:]
    return f"the temporary redis-server could not load the RDB: {' | '.join(log)}"


def _batches(keys: Iterable[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy_keys(source_url: str, target_url: str, progress: Progress) -> None:
    """DUMP/PTTL every key of every db of source, RESTORE ... REPLACE it into target."""
    for db in conn.keyspace(conn.client(source_url)):
        src, dst = conn.client(source_url, db), conn.client(target_url, db)
        for batch in _batches(src.scan_iter(count=BATCH)):
            read = src.pipeline(transaction=False)
            for key in batch:
                read.pttl(key)
                read.dump(key)
            replies = read.execute()
            write = dst.pipeline(transaction=False)
            for key, ttl, payload in zip(batch, replies[::2], replies[1::2], strict=True):
                if payload is not None and ttl != -2:  # -2: expired while we copied
                    write.restore(key, max(ttl, 0), payload, replace=True)
            write.execute()
            progress(sum(len(p) for p in replies[1::2] if p))


# --- comparison helper -------------------------------------------------------------------
