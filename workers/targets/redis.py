"""Redis target: check, snapshot (RDB), restore, and a key dump for tests and drills.

Two modes, chosen by settings.container:
- container: BGSAVE in the container; the RDB is read in place when it lies on a volume
  this worker can read (while Redis writes it, see _follow_save), else copied out through
  the Docker API; restore stops the container, puts the RDB into its data dir, and starts
  it again.
- live (no container): fetch the RDB over the replication protocol like `redis-cli --rdb`
  (from the master's disk when it writes RDB snapshots anyway, see _wants_disk);
  restore loads the RDB into a private temporary redis-server and copies every key into
  the target with DUMP/RESTORE.
Every RDB is checked (magic, version, CRC64) while it streams, before it counts.
The URL's password is only ever sent over the Redis connection, never put in an argv,
a message or a returned dict.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import shlex
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import redis
import urllib3
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from workers.config import RedisSettings
from workers.errors import TargetError
from workers.store.codec import (
    CHUNK,
    ArtifactWriter,
    ChunkStream,
    Codec,
    CorruptArtifact,
    read_plain,
)
from workers.targets import volume_direct
from workers.targets.redis_rdb import RdbCheck, verify_rdb

__all__ = ["check", "dump_keys", "restore", "snapshot", "verify_rdb"]

REDIS_SERVER = "/usr/bin/redis-server"
READ_TIMEOUT = 120  # s without a byte from the master (it sends "\n" keepalives every second)
SAVE_TIMEOUT = 3600  # s for a BGSAVE of a large dataset
READY_TIMEOUT = 600  # s for a (re)started server to load its RDB
STOP_TIMEOUT = 60  # s for Redis to shut down cleanly (it may fsync or save on SIGTERM)
CHILDREN = ("rdb_bgsave_in_progress", "aof_rewrite_in_progress", "module_fork_in_progress")
# A save's end is seen by polling INFO (~0.1 ms of Redis per poll), every POLL_SHARE of the
# time waited so far: at most that share late, within POLL_MIN..POLL_MAX seconds.
POLL_MIN, POLL_MAX, POLL_SHARE = 0.005, 0.1, 0.02
TEMP_WAIT = 0.2  # s for a save's child to create its temp file
CLOCK_SLACK = 0.05  # s: a file's mtime may lag the clock by a tick
BATCH = 500  # keys per DUMP/RESTORE pipeline round trip
PIPELINE_DEPTH = 8  # chunks (of up to CHUNK bytes) read ahead of the compression
# An RDB's strings are LZF-compressed already: zstd -3 makes it only ~6% smaller than -1
# (54 MB reference RDB: 25.8 vs 27.5 MB) for about three times the CPU.
RDB_ZSTD_LEVEL = 1

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the bytes moved since the last call
Emit = Callable[[bytes], None]


# --- connections -------------------------------------------------------------------------


def _where(url: str) -> str:
    """host:port or socket path: how a message names the server, without credentials."""
    opts = parse_url(url)
    return opts.get("path") or f"{opts.get('host', 'localhost')}:{opts.get('port', 6379)}"


def _client(url: str, db: int | None = None) -> redis.Redis:
    """A client for url; db overrides the URL's db (redis-py's from_url would ignore it)."""
    opts = parse_url(url)
    if db is not None:
        opts["db"] = db
    pool = redis.ConnectionPool(socket_timeout=READ_TIMEOUT, socket_connect_timeout=10, **opts)
    return redis.Redis(connection_pool=pool)


@contextmanager
def _errors(url: str, doing: str) -> Iterator[None]:
    """Turn a Redis failure into TargetError, with the URL's password scrubbed."""
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        password = parse_url(url).get("password")
        if password:
            message = message.replace(password, "***")
        raise TargetError("redis", f"{doing} at {_where(url)}: {message}") from None


def _keyspace(client: redis.Redis) -> dict[int, int]:
    """{db index: number of keys} for every non-empty db."""
    return {int(db[2:]): v["keys"] for db, v in client.info("keyspace").items()}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _config(client: redis.Redis, name: str) -> str | None:
    """CONFIG GET name, or None when this Redis has no such setting."""
    found = {_text(k): _text(v) for k, v in client.config_get(name).items()}
    return found.get(name)


def check(settings: RedisSettings) -> dict:
    """Reachability, version, key counts, memory, AOF state and (if allowed) the RDB dir."""
    client = _client(settings.url)
    with _errors(settings.url, "cannot reach Redis"):
        out = {
            "redis_version": client.info("server")["redis_version"],
            "keys": _keyspace(client),
            "used_memory": client.info("memory")["used_memory"],
            "aof": bool(client.info("persistence")["aof_enabled"]),
        }
        with suppress(redis.ResponseError):  # CONFIG renamed or denied: not fatal for a check
            out["rdb_dir"] = _config(client, "dir")
    return out


# --- snapshot ----------------------------------------------------------------------------


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


class _Stopped(Exception):
    """Raised in the reading thread when the consumer gave up."""


def _pipelined(produce: Callable[[Emit], None], emit: Emit) -> None:
    """produce(put) in a thread (the network or Docker read), emit (check, compress,
    store) here: reading overlaps compressing.  At most PIPELINE_DEPTH chunks wait in
    between, so memory stays flat; an error on either side ends both and is raised here."""
    chunks: queue.Queue = queue.Queue(maxsize=PIPELINE_DEPTH)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(data: bytes) -> None:
        if stop.is_set():
            raise _Stopped
        chunks.put(data)

    def read() -> None:
        try:
            produce(put)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed over to the caller's thread
            failure.append(exc)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=read, name="redis-read", daemon=True)
    thread.start()
    try:
        while (data := chunks.get()) is not None:
            emit(data)
    except BaseException:
        stop.set()
        while chunks.get() is not None:  # unblock the reader, which then stops
            pass
        raise
    finally:
        thread.join()
    if failure:
        raise failure[0]


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
    client = _client(settings.url)
    with _errors(settings.url, "cannot read Redis's state"):
        version = client.info("server")["redis_version"]
        keys = _keyspace(client)
        disk = not settings.container and _wants_disk(client)
    capture = partial(_capture, Path(out_dir) / f"dump_{backup_id}.rdb", codec, progress)
    if settings.container:
        mode = "container"
        read, record, summary = _snapshot_container(settings, client, docker, capture)
    else:
        mode = "replication"
        read, record, summary = capture(lambda sink: _fetch_rdb(settings.url, sink, disk))
    artifact = {
        **record,
        "kind": "redis",
        "source": "redis",
        "rdb_version": summary["rdb_version"],
        "rdb_checksum": summary["checksum"],
    }
    found = {"mode": mode, "redis_version": version, "keys": keys}
    return {"artifacts": [artifact], **found, "read": read}


Capture = Callable[[Callable[[Emit], str]], tuple[str, dict, dict]]


def _capture(
    path: Path, codec: Codec, progress: Progress, produce: Callable[[Emit], str]
) -> tuple[str, dict, dict]:
    """produce(sink) streams an RDB into a new artifact at path (and returns how it read
    it); (how, the artifact's record, the RDB's summary) once it is checked and committed."""
    with ArtifactWriter(path, codec) as writer:
        sink = _Sink(writer, progress)
        try:
            read = produce(sink)
        except _Moved:
            sink.take_back()
            raise
        try:
            summary = sink.check.finish()
        except CorruptArtifact as exc:
            raise TargetError("redis", f"the RDB received is damaged: {exc}") from None
        return read, writer.commit(), summary


def _open_socket(url: str) -> socket.socket:
    opts = parse_url(url)
    cls = opts.get("connection_class")
    if cls is UnixDomainSocketConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(opts["path"])
    else:
        host = opts.get("host", "localhost")
        sock = socket.create_connection((host, opts.get("port", 6379)), timeout=10)
        if cls is SSLConnection:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    sock.settimeout(READ_TIMEOUT)
    return sock


def _command(sock: socket.socket, reader: io.BufferedReader, *args: str) -> bytes:
    """Send one command in RESP and return its one-line reply; an error reply raises."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    sock.sendall(b"".join(parts))
    reply = reader.readline()
    if not reply.startswith(b"+"):
        raise redis.ResponseError(reply.strip().decode(errors="replace").lstrip("-") or "closed")
    return reply


def _wants_disk(client: redis.Redis) -> bool:
    """Whether to ask for the RDB from the master's disk rather than diskless.

    A diskless transfer waits repl-diskless-sync-delay seconds (5 by default) for more
    replicas to share its fork.  A master with save rules writes dump.rdb to its disk
    anyway (a BGSAVE, which is what the seed plan runs): not announcing `capa eof` makes it
    do just that, at once, and send the file.  Should that save fail (and the master then
    refuse writes, with stop-writes-on-bgsave-error), its own next scheduled save would
    have failed the same way.  Without save rules, or with no delay, or when CONFIG is
    denied, the master's own choice stands (diskless, as redis-cli asks)."""
    try:
        save = _config(client, "save")
        diskless = _config(client, "repl-diskless-sync")
        delay = _config(client, "repl-diskless-sync-delay")
    except redis.ResponseError:
        return False
    return bool(save) and diskless == "yes" and int(delay or 0) > 0


def _fetch_rdb(url: str, emit: Emit, disk: bool) -> str:
    """The RDB over replication into emit; how it came: "disk" or "diskless".  A disk
    transfer the master could not make (its BGSAVE failed: disk full, dir gone) is asked
    for again diskless, as long as no byte of it arrived."""
    received = 0

    def counted(data: bytes) -> None:
        nonlocal received
        received += len(data)
        emit(data)

    try:
        return _sync(url, counted, disk)
    except TargetError as exc:
        if not disk or received:
            raise
        log.warning("%s; asking for a diskless transfer instead", exc)
    return _sync(url, emit, disk=False)


def _sync(url: str, emit: Emit, disk: bool) -> str:
    """The replication handshake of `redis-cli --rdb`, then the RDB payload into emit."""
    opts = parse_url(url)
    with _errors(url, "cannot fetch the RDB over replication"):
        sock = _open_socket(url)
        try:
            reader = sock.makefile("rb", buffering=CHUNK)
            if opts.get("password"):
                user = [opts["username"]] if opts.get("username") else []
                _command(sock, reader, "AUTH", *user, opts["password"])
            if not disk:  # capa eof: accept a diskless (socket) transfer
                _command(sock, reader, "REPLCONF", "capa", "eof")
            # Redis >= 7: end the link after the RDB, keep no replica backlog for us.
            with suppress(redis.ResponseError):
                _command(sock, reader, "REPLCONF", "rdb-only", "1")
            sock.sendall(b"SYNC\r\n")
            how: list[str] = []
            _pipelined(lambda put: how.append(_read_payload(reader, put)), emit)
            return how[0]
        finally:
            sock.close()


def _read_payload(reader: io.BufferedReader, emit: Emit) -> str:
    """The payload into emit; "diskless" (EOF-marker framing) or "disk" (length-prefixed)."""
    # While the master waits (repl-diskless-sync-delay, or its BGSAVE) it sends bare "\n"
    # keepalives; the read timeout only has to outlast the gap between two of them.
    line = b"\n"
    while line == b"\n":
        line = reader.readline()
    if not line.startswith(b"$"):
        raise redis.ResponseError(line.strip().decode(errors="replace").lstrip("-") or "closed")
    header = line[1:].rstrip(b"\r\n")
    if header.startswith(b"EOF:"):
        _read_until_marker(reader, header[4:], emit)
        return "diskless"
    _read_exactly(reader, int(header), emit)
    return "disk"


# The master sends a diskless RDB in 16 KB pieces: each read gathers a whole CHUNK before
# handing it over, so the compressing thread gets a few large chunks, not thousands of
# small ones (the per-chunk hand-off, not the copy, was what cost).


def _read_exactly(reader: io.BufferedReader, size: int, emit: Emit) -> None:
    while size:
        data = reader.read(min(CHUNK, size))  # short only at the end of the stream
        if len(data) < min(CHUNK, size):
            raise ConnectionError("the master closed the link before the end of the RDB")
        emit(data)
        size -= len(data)


def _read_until_marker(reader: io.BufferedReader, marker: bytes, emit: Emit) -> None:
    """Diskless format: the payload ends with the 40-byte marker announced in the header
    (nothing is read past it: a Redis before 7 keeps the link open)."""
    window = bytearray()  # its last len(marker) bytes are held back: maybe the marker
    while not window.endswith(marker):
        data = reader.read1(CHUNK)
        if not data:
            raise ConnectionError("the master closed the link before the end of the RDB")
        window += data
        if len(window) >= CHUNK + len(marker):
            emit(bytes(window[: -len(marker)]))
            del window[: -len(marker)]
    emit(bytes(window[: -len(marker)]))


def _snapshot_container(
    settings: RedisSettings, client: redis.Redis, docker, capture: Capture
) -> tuple[str, dict, dict]:
    """BGSAVE, then the RDB read in place (on a local volume this worker can read: no copy
    through the engine), while Redis writes it where possible, or copied out of the
    container; (how it was read, the artifact's record, the RDB's summary)."""
    container = _container(settings, docker)
    with _errors(settings.url, "BGSAVE failed"):
        path = PurePosixPath(_config(client, "dir")) / _config(client, "dbfilename")
    source = volume_direct.mount_source(container.attrs, str(path))
    deadline = time.monotonic() + SAVE_TIMEOUT
    with _errors(settings.url, "BGSAVE failed"):
        begun = time.time()
        _start_bgsave(client, deadline)
        temp = _temp_rdb(client, source[0] / source[1], begun) if source else None
    if temp is not None:
        try:
            with temp, _errors(settings.url, "reading the RDB while Redis saved it failed"):
                return capture(lambda sink: _follow_save(client, temp, *source, sink))
        except _Moved:
            pass  # the save is over: the RDB it left is read below
    else:
        with _errors(settings.url, "BGSAVE failed"):
            _saved(_wait_idle(client, deadline, ("rdb_bgsave_in_progress",)))
    try:
        rdb = volume_direct.open_below(*source) if source else None
    except OSError:
        rdb = None  # moved or not readable here after all: through the engine
    if rdb is None:
        return capture(lambda sink: _copy_out(container, path, sink))
    with rdb:
        try:
            return capture(lambda sink: _read_saved(rdb, sink))
        except OSError as exc:
            raise TargetError("redis", f"reading {path} in place failed: {exc}") from None


def _read_saved(rdb: BinaryIO, emit: Emit) -> str:
    _pipelined(lambda put: _read_all(rdb, put), emit)
    return "in place"


class _Moved(Exception):
    """The file followed while Redis saved is not the RDB the save left."""


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
        time.sleep(POLL_MIN)
    return None


def _follow_save(client: redis.Redis, temp: BinaryIO, root: Path, relative: str, emit: Emit) -> str:
    """The RDB read while Redis writes it: compressing overlaps the save.  At its end the
    file followed must be the RDB it left (same inode), or _Moved is raised."""

    def follow(put: Emit) -> None:
        start = time.monotonic()
        deadline = start + SAVE_TIMEOUT
        while True:
            if chunk := temp.read(CHUNK):
                put(chunk)
                continue
            info = client.info("persistence")
            if not info.get("rdb_bgsave_in_progress"):
                _saved(info)
                break
            now = time.monotonic()
            if now > deadline:
                raise TargetError("redis", f"BGSAVE did not finish within {SAVE_TIMEOUT} s")
            time.sleep(min(POLL_MAX, max(POLL_MIN, (now - start) * POLL_SHARE)))
        while chunk := temp.read(CHUNK):  # written before the save's end was seen
            put(chunk)
        with volume_direct.open_below(root, relative) as saved:
            if not os.path.sameopenfile(saved.fileno(), temp.fileno()):
                raise _Moved

    _pipelined(follow, emit)
    return "in place, while saved"


def _read_all(src: BinaryIO, put: Emit) -> None:
    while chunk := src.read(CHUNK):
        put(chunk)


def _container(settings: RedisSettings, docker):
    if docker is None:
        raise TargetError("redis", "container mode needs the Docker engine, which is not set up")
    try:
        return docker.containers.get(settings.container)
    except Exception as exc:  # docker.errors.NotFound / APIError / connection errors
        raise TargetError("redis", f"container {settings.container}: {exc}") from None


def _bgsave(client: redis.Redis) -> None:
    """BGSAVE (after any save already running) and wait until it wrote the RDB.

    Its end is the end of the running save in INFO, polled every few ms (LASTSAVE counts
    whole seconds: waiting for it to tick cost up to a second per snapshot)."""
    deadline = time.monotonic() + SAVE_TIMEOUT
    _start_bgsave(client, deadline)
    _saved(_wait_idle(client, deadline, ("rdb_bgsave_in_progress",)))


def _start_bgsave(client: redis.Redis, deadline: float) -> None:
    """BGSAVE, after any save or rewrite already running: returns once our fork runs."""
    client.set_response_callback("BGSAVE", lambda reply, **_: _text(reply))
    while True:
        try:
            if "started" in client.bgsave(schedule=True):
                return
        except redis.ResponseError as exc:
            if "already in progress" not in str(exc):
                raise
            # Another save (maybe a replica's, to a socket) began before us: ours after it.
        # Not started (scheduled after an AOF rewrite, or refused): ask again once no child
        # runs; a scheduled save that began meanwhile refuses ours until it ends.
        _wait_idle(client, deadline, CHILDREN)


def _saved(info: dict) -> None:
    """Raise unless the last save (seen ended in `info`, INFO persistence) succeeded."""
    if info["rdb_last_bgsave_status"] != "ok":
        raise TargetError("redis", "BGSAVE failed: see the Redis log (disk full?)")


def _wait_idle(client: redis.Redis, deadline: float, running: tuple[str, ...]) -> dict:
    """Poll INFO persistence until none of its `running` flags is set; return that INFO."""
    start = time.monotonic()
    while True:
        info = client.info("persistence")
        if not any(info.get(flag) for flag in running):
            return info
        now = time.monotonic()
        if now > deadline:
            raise TargetError("redis", f"BGSAVE did not finish within {SAVE_TIMEOUT} s")
        time.sleep(min(POLL_MAX, max(POLL_MIN, (now - start) * POLL_SHARE)))


def _tar_reader(container, path: PurePosixPath) -> tarfile.TarFile:
    """A streaming tar reader over the container's archive of path."""
    try:
        stream, _stat = container.get_archive(str(path), chunk_size=CHUNK)
    except Exception as exc:  # docker.errors.NotFound / APIError
        raise TargetError("redis", f"cannot read {path} in the container: {exc}") from None
    raw = io.BufferedReader(ChunkStream(iter(stream)), CHUNK)
    return tarfile.open(fileobj=raw, mode="r|", bufsize=CHUNK)  # the default reads 10 KB


def _copy_out(container, path: PurePosixPath, emit: Emit) -> str:
    """Stream the single file member of get_archive(path) into emit; "engine"."""

    def read(put: Emit) -> None:
        with _tar_reader(container, path) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise TargetError("redis", f"{path} in the container is not a regular file")
            _read_all(tar.extractfile(member), put)

    try:
        _pipelined(read, emit)
    except (tarfile.TarError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise TargetError("redis", f"copying {path} out of the container failed: {exc}") from None
    return "engine"


# --- restore -----------------------------------------------------------------------------


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
        keys = _restore_container(settings, docker, artifact, identity_file, summary, progress)
        mode = "container"
    else:
        keys, summary = _restore_live(settings, artifact, identity_file, progress)
        mode = "replication"
    return {"mode": mode, "keys": keys, "rdb_version": summary["rdb_version"]}


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
    client = _client(settings.url)
    try:
        with _errors(settings.url, "cannot read the data layout"):
            values = {name: _config(client, name) for name in LAYOUT}
    except TargetError:
        if _reachable(client):
            raise  # up but refusing CONFIG: guessing could put the RDB in the wrong place
        values = _command_line_config(container)
    return _Layout(
        dir=PurePosixPath(values.get("dir") or "/data"),
        dbfilename=values.get("dbfilename") or "dump.rdb",
        aof=values.get("appendonly") == "yes",
        appendfilename=values.get("appendfilename") or "appendonly.aof",
        appenddirname=values.get("appenddirname") or None,
    )


def _reachable(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ResponseError:  # e.g. LOADING, NOAUTH: something answers
        return True
    except (redis.RedisError, OSError):
        return False


def _command_line_config(container) -> dict[str, str]:
    """`--name value` pairs of the container's command (a config file is not read)."""
    config = container.attrs.get("Config") or {}
    args = list(config.get("Cmd") or [])
    values = {"dir": config.get("WorkingDir") or "/data", "appenddirname": "appendonlydir"}
    for name, value in zip(args, args[1:], strict=False):
        if name.startswith("--") and name[2:] in LAYOUT:
            values[name[2:]] = value
    return values


def _restore_container(
    settings: RedisSettings,
    docker,
    artifact: Path,
    identity_file: Path | None,
    summary: dict,
    progress: Progress,
) -> dict[int, int]:
    container = _container(settings, docker)
    layout = _layout(settings, container)
    container.stop(timeout=STOP_TIMEOUT)
    try:
        uid, gid = _owner(container, layout.dir)
        members = _members(container, layout, summary["bytes"], artifact, identity_file, progress)
        if not container.put_archive(str(layout.dir), _tar_stream(members, uid, gid)):
            raise TargetError("redis", f"Docker refused to write into {layout.dir}")
    finally:
        container.start()  # whatever happened, bring the service back
    client = _wait_ready(settings.url, lambda: _container_gone(container))
    if layout.aof:
        with _errors(settings.url, "BGSAVE after restore failed"):
            _bgsave(client)  # so dump.rdb matches too, should AOF be turned off later
    with _errors(settings.url, "cannot count the restored keys"):
        return _keyspace(client)


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
        _copy_out(container, path, text.write)
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
    with _tar_reader(container, path) as tar:
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


def _wait_ready(url: str, failed: Callable[[], str | None]) -> redis.Redis:
    """Wait until Redis answers PING and has loaded its data (INFO loading:0)."""
    client = _client(url)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if client.ping() and client.info("persistence")["loading"] == 0:
                return client
        except (redis.ConnectionError, redis.TimeoutError):  # starting, or BusyLoadingError
            pass
        reason = failed()
        if reason:
            raise TargetError("redis", reason)
        time.sleep(0.2)
    raise TargetError("redis", f"{_where(url)} did not load its data within {READY_TIMEOUT} s")


def _restore_live(
    settings: RedisSettings, artifact: Path, identity_file: Path | None, progress: Progress
) -> tuple[dict[int, int], dict]:
    target = _client(settings.url)
    with _errors(settings.url, "cannot reach the target"):
        databases = int(_config(target, "databases") or 16)
    with (
        _temp_server(artifact, identity_file, databases) as (source, summary),
        _errors(settings.url, "restore into the target failed"),
    ):
        target.flushall()
        _copy_keys(source, settings.url, progress)
        return _keyspace(target), summary


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
        _wait_ready(url, lambda: _server_gone(proc, tmp))
        yield url, summary
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
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
    for db in _keyspace(_client(source_url)):
        src, dst = _client(source_url, db), _client(target_url, db)
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
    with _errors(url, "cannot dump keys"):
        for db in _keyspace(_client(url)):
            client = _client(url, db)
            keys = {}
            for key in client.scan_iter(count=1000):
                kind = client.type(key).decode()
                ttl = client.pttl(key)
                keys[key] = (kind, _value(client, kind, key), ttl / 1000 if ttl >= 0 else None)
            out[db] = keys
    return out
