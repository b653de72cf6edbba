"""A Redis snapshot step's work: one RDB, checked as it streams, into one artifact."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from workers.config import RedisSettings
from workers.errors import TargetError
from workers.store.codec import ArtifactWriter, Codec, CorruptArtifact
from workers.targets.redis import connection as conn
from workers.targets.redis.container_snapshot import Moved, snapshot_container
from workers.targets.redis.rdb import RdbCheck
from workers.targets.redis.replication import fetch_rdb, wants_disk
from workers.targets.redis.stream import Emit, Progress

# An RDB's strings are LZF-compressed already: zstd -3 makes it only ~6% smaller than -1
# (54 MB reference RDB: 25.8 vs 27.5 MB) for about three times the CPU.
RDB_ZSTD_LEVEL = 1


class _Sink:
    """Check, store and report every byte of the RDB as it arrives."""

    def __init__(self, writer: ArtifactWriter, progress: Progress) -> None:
        self.check = RdbCheck()
        self._writer = writer
        self._progress = progress

    def __call__(self, data: bytes) -> None:
        self.check.update(data)
        self._writer.write(data)
        self._progress(len(data))

    def take_back(self) -> None:
        """What was stored is thrown away (to be read again): the progress forgets it."""
        self._progress(-self.check.size)


def snapshot(
    settings: RedisSettings,
    docker,  # docker.DockerClient | None
    out_dir: Path,
    backup_id: str,
    codec: Codec,
    progress: Progress,
) -> dict:
    """Write out_dir/dump_<backup_id>.rdb[.zst][.age], checked; progress gets RDB bytes.
    zstd runs at RDB_ZSTD_LEVEL at most, whatever the configured level, in one thread: the
    RDB comes as fast as Redis writes it, which one core outpaces at that level, and the
    other cores are left to Redis's fork."""
    codec = replace(codec, zstd_level=min(codec.zstd_level, RDB_ZSTD_LEVEL), zstd_threads=0)
    client = conn.client(settings.url)
    with conn.errors(settings.url, "cannot read Redis's state"):
        version = client.info("server")["redis_version"]
        keys = conn.keyspace(client)
        disk = not settings.container and wants_disk(client)
    capture = partial(_capture, Path(out_dir) / f"dump_{backup_id}.rdb", codec, progress)
    if settings.container:
        mode = "container"
        read, record, summary = snapshot_container(settings, client, docker, capture)
    else:
        mode = "replication"
        read, record, summary = capture(lambda sink: fetch_rdb(settings.url, sink, disk))
    artifact = {
        **record,
        "kind": "redis",
        "source": "redis",
        "rdb_version": summary["rdb_version"],
        "rdb_checksum": summary["checksum"],
    }
    found = {"mode": mode, "redis_version": version, "keys": keys}
    return {"artifacts": [artifact], **found, "read": read}


def _capture(
    path: Path, codec: Codec, progress: Progress, produce: Callable[[Emit], str]
) -> tuple[str, dict, dict]:
    """produce(sink) streams an RDB into a new artifact at path (and returns how it read
    it); (how, the artifact's record, the RDB's summary) once it is checked and committed."""
    with ArtifactWriter(path, codec) as writer:
        sink = _Sink(writer, progress)
        try:
            read = produce(sink)
        except Moved:
            sink.take_back()
            raise
        try:
            summary = sink.check.finish()
        except CorruptArtifact as exc:
            raise TargetError("redis", f"the RDB received is damaged: {exc}") from None
        return read, writer.commit(), summary
