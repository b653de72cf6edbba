"""A Redis restore: the whole dataset replaced by the artifact's, in the target's mode."""

from __future__ import annotations

from pathlib import Path

from workers.config import RedisSettings
from workers.store.codec import read_plain
from workers.targets.redis.container_restore import restore_container
from workers.targets.redis.live_restore import restore_live
from workers.targets.redis.rdb import verify_rdb
from workers.targets.redis.stream import Progress


def restore(
    settings: RedisSettings,
    docker,  # docker.DockerClient | None
    artifact: Path,
    identity_file: Path | None,
    progress: Progress,
) -> dict:
    """Replace the target's whole dataset with the artifact's; the artifact is checked
    first, so a damaged one never stops or flushes anything.  progress gets the bytes of
    RDB (container) or of DUMP payloads (live) moved."""
    if settings.container:
        summary = verify_rdb(read_plain(artifact, identity_file))
        keys = restore_container(settings, docker, artifact, identity_file, summary, progress)
        mode = "container"
    else:
        keys, summary = restore_live(settings, artifact, identity_file, progress)
        mode = "replication"
    return {"mode": mode, "keys": keys, "rdb_version": summary["rdb_version"]}
