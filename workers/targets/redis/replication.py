"""The RDB of a live master over the replication protocol, as `redis-cli --rdb` fetches it.

The password is only ever sent over the connection (AUTH), never put in an argv or a
message."""

from __future__ import annotations

import io
import logging
import socket
import ssl
from contextlib import suppress

import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from workers.errors import TargetError
from workers.store.codec import CHUNK
from workers.targets.redis import connection as conn
from workers.targets.redis.stream import Emit, pipelined

log = logging.getLogger(__name__)


def wants_disk(client: redis.Redis) -> bool:
    """Whether to ask for the RDB from the master's disk rather than diskless.

    A diskless transfer waits repl-diskless-sync-delay seconds (5 by default) for more
    replicas to share its fork.  A master with save rules writes dump.rdb to its disk
    anyway (a BGSAVE, which is what the seed plan runs): not announcing `capa eof` makes it
    do just that, at once, and send the file.  Should that save fail (and the master then
    refuse writes, with stop-writes-on-bgsave-error), its own next scheduled save would
    have failed the same way.  Without save rules, or with no delay, or when CONFIG is
    denied, the master's own choice stands (diskless, as redis-cli asks)."""
    try:
        save = conn.config(client, "save")
        diskless = conn.config(client, "repl-diskless-sync")
        delay = conn.config(client, "repl-diskless-sync-delay")
    except redis.ResponseError:
        return False
    return bool(save) and diskless == "yes" and int(delay or 0) > 0


def fetch_rdb(url: str, emit: Emit, disk: bool) -> str:
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
    sock.settimeout(conn.READ_TIMEOUT)
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


def _sync(url: str, emit: Emit, disk: bool) -> str:
    """The replication handshake of `redis-cli --rdb`, then the RDB payload into emit."""
    opts = parse_url(url)
    with conn.errors(url, "cannot fetch the RDB over replication"):
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
            pipelined(lambda put: how.append(_read_payload(reader, put)), emit)
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
