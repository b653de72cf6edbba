"""The Redis container, and files copied out of it through the Docker API's tar stream."""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath

import urllib3

from workers.config import RedisSettings
from workers.errors import TargetError
from workers.store.codec import CHUNK, ChunkStream
from workers.targets.redis.stream import Emit, pipelined, read_all


def find_container(settings: RedisSettings, docker):
    """The Redis container named in the settings (a docker Container)."""
    if docker is None:
        raise TargetError("redis", "container mode needs the Docker engine, which is not set up")
    try:
        return docker.containers.get(settings.container)
    except Exception as exc:  # docker.errors.NotFound / APIError / connection errors
        raise TargetError("redis", f"container {settings.container}: {exc}") from None


def tar_reader(container, path: PurePosixPath) -> tarfile.TarFile:
    """A streaming tar reader over the container's archive of path."""
    try:
        stream, _stat = container.get_archive(str(path), chunk_size=CHUNK)
    except Exception as exc:  # docker.errors.NotFound / APIError
        raise TargetError("redis", f"cannot read {path} in the container: {exc}") from None
    raw = io.BufferedReader(ChunkStream(iter(stream)), CHUNK)
    return tarfile.open(fileobj=raw, mode="r|", bufsize=CHUNK)  # the default reads 10 KB


def copy_out(container, path: PurePosixPath, emit: Emit) -> str:
    """Stream the single file member of get_archive(path) into emit; "engine"."""

    def read(put: Emit) -> None:
        with tar_reader(container, path) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise TargetError("redis", f"{path} in the container is not a regular file")
            read_all(tar.extractfile(member), put)

    try:
        pipelined(read, emit)
    except (tarfile.TarError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise TargetError("redis", f"copying {path} out of the container failed: {exc}") from None
    return "engine"
