"""Container mode's snapshot: BGSAVE in the container, then its RDB read in place on a
local volume this worker can read (while Redis writes it, where that can be proved to be
the file the save leaves), else copied out through the Docker API."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import redis

from workers.config import RedisSettings
from workers.errors import TargetError
from workers.store.codec import CHUNK
from workers.targets.redis import bgsave
from workers.targets.redis import connection as conn
from workers.targets.redis.container_files import copy_out, find_container
from workers.targets.redis.stream import Capture, Emit, pipelined, read_all
from workers.targets.volumes import direct as volume_direct

TEMP_WAIT = 0.2  # s for a save's child to create its temp file
CLOCK_SLACK = 0.05  # s: a file's mtime may lag the clock by a tick


class Moved(Exception):
    """The file followed while Redis saved is not the RDB the save left."""


def snapshot_container(
    settings: RedisSettings, client: redis.Redis, docker, capture: Capture
) -> tuple[str, dict, dict]:
    """BGSAVE, then the RDB read in place (on a local volume this worker can read: no copy
    through the engine), while Redis writes it where possible, or copied out of the
    container; (how it was read, the artifact's record, the RDB's summary)."""
    container = find_container(settings, docker)
    with conn.errors(settings.url, "BGSAVE failed"):
        path = PurePosixPath(conn.config(client, "dir")) / conn.config(client, "dbfilename")
    source = volume_direct.mount_source(container.attrs, str(path))
    deadline = time.monotonic() + bgsave.SAVE_TIMEOUT
    with conn.errors(settings.url, "BGSAVE failed"):
        begun = time.time()
        bgsave.start_bgsave(client, deadline)
        temp = _temp_rdb(client, source[0] / source[1], begun) if source else None
    if temp is not None:
        try:
            with temp, conn.errors(settings.url, "reading the RDB while Redis saved it failed"):
                return capture(lambda sink: _follow_save(client, temp, *source, sink))
        except Moved:
            pass  # the save is over: the RDB it left is read below
    else:
        with conn.errors(settings.url, "BGSAVE failed"):
            bgsave.saved(bgsave.wait_idle(client, deadline, ("rdb_bgsave_in_progress",)))
    try:
        rdb = volume_direct.open_below(*source) if source else None
    except OSError:
        rdb = None  # moved or not readable here after all: through the engine
    if rdb is None:
        return capture(lambda sink: copy_out(container, path, sink))
    with rdb:
        try:
            return capture(lambda sink: _read_saved(rdb, sink))
        except OSError as exc:
            raise TargetError("redis", f"reading {path} in place failed: {exc}") from None


def _read_saved(rdb: BinaryIO, emit: Emit) -> str:
    pipelined(lambda put: read_all(rdb, put), emit)
    return "in place"


def _temp_rdb(client: redis.Redis, rdb: Path, begun: float) -> BinaryIO | None:
    """The file our BGSAVE's child is writing (Redis names it temp-PID.rdb in the RDB's
    directory and renames it over the RDB at the end), opened; None when the save is over
    already, or there is not exactly one such file written since `begun` within TEMP_WAIT
    seconds."""
    deadline = time.monotonic() + TEMP_WAIT
    while client.info("persistence").get("rdb_bgsave_in_progress"):
        with suppress(OSError):
            fresh = [
                entry
                for entry in os.scandir(rdb.parent)
                if entry.name.startswith("temp-")
                and entry.name.endswith(".rdb")
                and entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_mtime >= begun - CLOCK_SLACK
            ]
            if len(fresh) == 1:
                return volume_direct.open_below(rdb.parent, fresh[0].name)
            if len(fresh) > 1:
                return None
        if time.monotonic() > deadline:
            return None
        time.sleep(bgsave.POLL_MIN)
    return None


def _follow_save(client: redis.Redis, temp: BinaryIO, root: Path, relative: str, emit: Emit) -> str:
    """The RDB read while Redis writes it: compressing overlaps the save.  At its end the
    file followed must be the RDB it left (same inode), or _Moved is raised."""

    def follow(put: Emit) -> None:
        start = time.monotonic()
        deadline = start + bgsave.SAVE_TIMEOUT
        while True:
            if chunk := temp.read(CHUNK):
                put(chunk)
                continue
            info = client.info("persistence")
            if not info.get("rdb_bgsave_in_progress"):
                bgsave.saved(info)
                break
            now = time.monotonic()
            if now > deadline:
                raise TargetError("redis", f"BGSAVE did not finish within {bgsave.SAVE_TIMEOUT} s")
            time.sleep(bgsave.poll_interval(now - start))
        while chunk := temp.read(CHUNK):  # written before the save's end was seen
            put(chunk)
        with volume_direct.open_below(root, relative) as saved:
            if not os.path.sameopenfile(saved.fileno(), temp.fileno()):
                raise Moved

    pipelined(follow, emit)
    return "in place, while saved"
