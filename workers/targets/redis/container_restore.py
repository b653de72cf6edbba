"""Container mode's restore: stop the container, put the RDB into its data dir (as the AOF's
base when AOF is on), start it again and wait until it has loaded."""

from __future__ import annotations

import io
import shlex
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workers.config import RedisSettings
from workers.errors import TargetError
from workers.store.codec import read_plain
from workers.targets.redis import bgsave
from workers.targets.redis import connection as conn
from workers.targets.redis.container_files import copy_out, find_container, tar_reader
from workers.targets.redis.stream import Progress


@dataclass(frozen=True)
class _Layout:
    """Where the container's Redis keeps its data (paths inside the container)."""

    dir: PurePosixPath
    dbfilename: str
    aof: bool
    appendfilename: str
    appenddirname: str | None  # None before Redis 7 (single-file AOF)


LAYOUT = ("dir", "dbfilename", "appendonly", "appendfilename", "appenddirname")


def _layout(settings: RedisSettings, container) -> _Layout:
    """Asked from the running Redis; when it is down (a crash is what restores are for),
    read from the container's command line, with Redis 7's defaults for what it omits."""
    client = conn.client(settings.url)
    try:
        with conn.errors(settings.url, "cannot read the data layout"):
            values = {name: conn.config(client, name) for name in LAYOUT}
    except TargetError:
        if conn.reachable(client):
            raise  # up but refusing CONFIG: guessing could put the RDB in the wrong place
        values = _command_line_config(container)
    return _Layout(
        dir=PurePosixPath(values.get("dir") or "/data"),
        dbfilename=values.get("dbfilename") or "dump.rdb",
        aof=values.get("appendonly") == "yes",
        appendfilename=values.get("appendfilename") or "appendonly.aof",
        appenddirname=values.get("appenddirname") or None,
    )


def _command_line_config(container) -> dict[str, str]:
    """`--name value` pairs of the container's command (a config file is not read)."""
    config = container.attrs.get("Config") or {}
    args = list(config.get("Cmd") or [])
    values = {"dir": config.get("WorkingDir") or "/data", "appenddirname": "appendonlydir"}
    for name, value in zip(args, args[1:], strict=False):
        if name.startswith("--") and name[2:] in LAYOUT:
            values[name[2:]] = value
    return values


def restore_container(
    settings: RedisSettings,
    docker,
    artifact: Path,
    identity_file: Path | None,
    summary: dict,
    progress: Progress,
) -> dict[int, int]:
    """The checked RDB into the stopped container's data dir; its key counts once loaded."""
    container = find_container(settings, docker)
    layout = _layout(settings, container)
    container.stop(timeout=conn.STOP_TIMEOUT)
    try:
        uid, gid = _owner(container, layout.dir)
        members = _members(container, layout, summary["bytes"], artifact, identity_file, progress)
        if not container.put_archive(str(layout.dir), _tar_stream(members, uid, gid)):
            raise TargetError("redis", f"Docker refused to write into {layout.dir}")
    finally:
        container.start()  # whatever happened, bring the service back
    client = conn.wait_ready(settings.url, lambda: _container_gone(container))
    if layout.aof:
        with conn.errors(settings.url, "BGSAVE after restore failed"):
            bgsave.bgsave(client)  # so dump.rdb matches too, should AOF be turned off later
    with conn.errors(settings.url, "cannot count the restored keys"):
        return conn.keyspace(client)


# With AOF on, Redis loads the AOF and ignores dump.rdb, so the restored RDB must become
# the AOF.  Chosen over "start with appendonly off, then CONFIG SET appendonly yes": a
# container's command line cannot be changed without recreating it, and put_archive cannot
# delete files.  Redis >= 7: the RDB is the base file of a new manifest (an RDB is a valid
# base), with an empty incr file, and the old files listed as history, which Redis deletes
# itself.  Redis < 7: the single AOF file is replaced by the RDB (an RDB-preamble AOF).


def _members(
    container,
    layout: _Layout,
    size: int,
    artifact: Path,
    identity_file: Path | None,
    progress: Progress,
) -> list[tuple[str, int, Callable[[], Iterable[bytes]]]]:
    """(path relative to the data dir, size, chunk source) of each file to put."""

    def rdb() -> Iterator[bytes]:
        for chunk in read_plain(artifact, identity_file):
            progress(len(chunk))
            yield chunk

    if not layout.aof:
        return [(layout.dbfilename, size, rdb)]
    if layout.appenddirname is None:
        return [(layout.appendfilename, size, rdb)]
    manifest_path = f"{layout.appenddirname}/{layout.appendfilename}.manifest"
    old = _read_manifest(container, layout.dir / manifest_path)
    base_seq = 1 + max((seq for name, seq in old if ".base." in name), default=0)
    incr_seq = 1 + max((seq for name, seq in old if ".incr." in name), default=0)
    base = f"{layout.appendfilename}.{base_seq}.base.rdb"
    incr = f"{layout.appendfilename}.{incr_seq}.incr.aof"
    lines = [f"file {base} seq {base_seq} type b", f"file {incr} seq {incr_seq} type i"]
    lines += [f"file {shlex.quote(name)} seq {seq} type h" for name, seq in old]
    manifest = ("\n".join(lines) + "\n").encode()
    return [
        (f"{layout.appenddirname}/{base}", size, rdb),
        (f"{layout.appenddirname}/{incr}", 0, lambda: iter(())),
        (manifest_path, len(manifest), lambda: iter((manifest,))),
    ]


def _read_manifest(container, path: PurePosixPath) -> list[tuple[str, int]]:
    """(file name, seq) of every entry of a Redis 7 AOF manifest; [] when there is none."""
    text = io.BytesIO()
    try:
        copy_out(container, path, text.write)
    except TargetError:  # no manifest yet: nothing for Redis to clean up
        return []
    entries = []
    for line in text.getvalue().decode().splitlines():
        words = shlex.split(line)
        fields = dict(zip(words[::2], words[1::2], strict=False))
        if "file" in fields and "seq" in fields:
            entries.append((fields["file"], int(fields["seq"])))
    return entries


def _owner(container, path: PurePosixPath) -> tuple[int, int]:
    """uid/gid of path in the container (the first header of its archive)."""
    with tar_reader(container, path) as tar:
        member = tar.next()
    return (member.uid, member.gid) if member else (0, 0)


def _tar_stream(
    members: list[tuple[str, int, Callable[[], Iterable[bytes]]]], uid: int, gid: int
) -> Iterator[bytes]:
    """A tar archive generated on the fly: each file's size is known before its data."""
    for name, size, chunks in members:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = size, 0o600, uid, gid
        info.mtime = int(time.time())
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        written = 0
        for chunk in chunks():
            written += len(chunk)
            yield chunk
        if written != size:
            raise TargetError("redis", f"{name}: the artifact changed while being restored")
        if size % tarfile.BLOCKSIZE:
            yield tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)


def _container_gone(container) -> str | None:
    container.reload()
    if container.status in ("exited", "dead"):
        logs = container.logs(tail=5).decode(errors="replace").strip()
        return f"the container stopped after restore: {logs}"
    return None
