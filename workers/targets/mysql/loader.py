"""Load a dump made by mysql.dump into a database, possibly under another name.

The dump is read once, as a stream: its header and DDL run on one connection, while the
INSERTs of every table (1 MiB each) go through a bounded queue to `settings.parallel`
connections that run them in any order, with the header's session settings (no unique or
foreign key checks, no binary log when allowed).  Views, routines, triggers and events
wait for every row.  Measured on the reference set and not done: deferring secondary
indexes (ALTER TABLE ADD INDEX after the rows), grouping INSERTs into transactions and
SET NAMES binary were no faster there; merging INSERTs into 4-8 MiB statements, one more
connection than `parallel`, or skipping CHECK constraints neither; one transaction per
table (MariaDB's bulk insert into an empty table) took twice the server's CPU.  The load
is bound by the server's CPU: the reader thread is never what the connections wait for.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql

from workers.config import MySQLSettings
from workers.errors import TargetError
from workers.store.codec import CorruptArtifact, codec_of, read_plain
from workers.targets.mysql.common import (
    BLOCK,
    COMPLETED,
    ER_SPECIFIC_ACCESS_DENIED,
    connect,
    qi,
    unblock,
)

_CREATE_DB = re.compile(rb"^CREATE DATABASE IF NOT EXISTS (`(?:[^`]|``)+`)(.*)$", re.S)
_USE = b"USE "
_CREATE_DATABASE = b"CREATE DATABASE "
_INSERT = b"INSERT INTO "
_TABLE_DDL = (b"DROP TABLE IF EXISTS ", b"CREATE TABLE ")
# The key or column a server error names, e.g. "for key 'patient_no'"; never a value.
_NAMED = re.compile(r"(?:key|column) '[^']*'(?: at row \d+)?$")
ER_LOCK_DEADLOCK = 1213
ZSTD_MAGIC = 0xFD2FB528
ZSTD_SKIPPABLE = 0x184D2A50  # 0x184D2A50..5F
DEADLOCK_RETRIES = 3
QUEUE_STATEMENTS = 4  # of at most ~1 MiB each (the dumper's STATEMENT_BYTES)


def _zstd_frames_complete(artifact: Path) -> bool:
    """Whether an unencrypted zstd file is a sequence of whole frames, walked by their
    block headers without decompressing (the zstd format, RFC 8878): a file cut anywhere
    fails.  Damage inside a block is left to the load (and to the restore's preflight,
    which verifies every artifact's sha256 first)."""
    with open(artifact, "rb", buffering=0) as fh:  # a few bytes per block: no read-ahead
        end = os.fstat(fh.fileno()).st_size
        while fh.tell() < end:
            magic = int.from_bytes(fh.read(4), "little")
            if magic & 0xFFFFFFF0 == ZSTD_SKIPPABLE:
                fh.seek(int.from_bytes(fh.read(4), "little"), os.SEEK_CUR)
                continue
            if magic != ZSTD_MAGIC:
                return False
            (descriptor,) = fh.read(1) or b"\xff"  # reserved bit set: not a frame
            single, has_sum = descriptor >> 5 & 1, descriptor >> 2 & 1
            fcs = (single, 2, 4, 8)[descriptor >> 6]
            fh.seek((not single) + (0, 1, 2, 4)[descriptor & 3] + fcs, os.SEEK_CUR)
            last = 0
            while not last:
                header = int.from_bytes(fh.read(3).ljust(3, b"\xff"), "little")
                last, kind, size = header & 1, header >> 1 & 3, header >> 3
                if kind == 3:  # reserved: not a block (or the file ended)
                    return False
                fh.seek(1 if kind == 1 else size, os.SEEK_CUR)
            fh.seek(4 * has_sum, os.SEEK_CUR)
        return 0 < fh.tell() == end


def _check_complete(artifact: Path, identity_file: Path | None) -> None:
    """Make sure the artifact is whole before anything is dropped: a truncated file must
    not cost the database it was meant to restore.  An unencrypted zstd file is checked by
    its frame structure (cheap); any other is read to its '-- Dump completed' line."""
    if codec_of(artifact) == ("zstd", False):
        if not _zstd_frames_complete(artifact):
            raise TargetError("mysql", f"{artifact.name} is truncated or not a zstd file")
        return
    tail = b""
    for chunk in read_plain(artifact, identity_file):
        tail = (tail + chunk)[-len(COMPLETED) - 1 :]
    if not tail.endswith(b"\n" + COMPLETED):
        raise TargetError("mysql", f"{artifact.name} is truncated: no '-- Dump completed' line")


def _fast_session(conn: pymysql.Connection) -> None:
    conn.query("SET SESSION unique_checks = 0, foreign_key_checks = 0")
    try:
        conn.query("SET SESSION sql_log_bin = 0")  # needs SUPER/BINLOG ADMIN; optional
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != ER_SPECIFIC_ACCESS_DENIED:
            raise


class _Reader:
    """readline() and read(n) straight over plaintext chunks: a dump's lines are up to a
    MiB long, and a buffered file object over the chunks copies them several times."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf, self.pos = chunks, b"", 0

    def _more(self) -> bool:
        chunk = next(self.chunks, b"")
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return bool(chunk)

    def readline(self) -> bytes:
        scanned = self.pos
        while (end := self.buf.find(b"\n", scanned)) < 0:
            scanned = len(self.buf) - self.pos
            if not self._more():
                return self.read(len(self.buf) - self.pos)
        return self.read(end + 1 - self.pos)

    def read(self, size: int) -> bytes:
        while len(self.buf) - self.pos < size and self._more():
            pass
        out = self.buf[self.pos : self.pos + size]
        self.pos += len(out)
        return out


def _statements(stream: _Reader, target: str, seen: dict) -> Iterator[tuple[int, bytes]]:
    """(line number, statement) pairs of a dump; the CREATE DATABASE and USE lines are
    pointed at `target` (the quoted source name goes to seen["source"]).  Raises ValueError
    on a malformed or cut-short stream."""
    number = 0
    while line := stream.readline():
        number += 1
        if not line.endswith(b"\n"):
            raise ValueError(f"line {number} is cut short")
        if line.startswith(BLOCK):
            size = int(line[len(BLOCK) :])
            body = stream.read(size)
            if len(body) != size:
                raise ValueError(f"the block at line {number} is cut short")
            yield number, unblock(body)
            number += body.count(b"\n")
        elif line == b"\n" or line.startswith(b"-- "):
            continue
        elif not line.endswith(b";\n"):
            raise ValueError(f"line {number} is not a statement")
        elif match := _CREATE_DB.match(line[:-2]):
            seen["source"] = match.group(1)
            yield number, b"CREATE DATABASE " + qi(target).encode() + match.group(2)
        elif line.startswith(_USE):
            yield number, _USE + qi(target).encode()
        else:
            yield number, line[:-2]


def _table_of(statement: bytes) -> str:
    """The table an INSERT loads, as quoted in the dump."""
    return statement[len(_INSERT) :].split(b" ", 1)[0].decode(errors="replace")


def _what(statement: bytes) -> str:
    """The start of a statement, for an error message (never row values)."""
    if statement.startswith(_INSERT):
        return f"rows of table {_table_of(statement)}"
    return statement[:120].decode(errors="replace")


def _why(statement: bytes, exc: pymysql.err.MySQLError) -> str:
    """The server's complaint; for rows only its wording and the key or column it names,
    since it quotes the offending values (a duplicate patient number, a name)."""
    code, message = exc.args[0], str(exc.args[-1])
    if not statement.startswith(_INSERT):
        return message
    wording = message.split("'", 1)[0].strip()
    named = _NAMED.search(message)
    return f"error {code}: {wording}" + (f" ({named.group(0)})" if named else "")


class _Failed(Exception):
    def __init__(self, number: int, statement: bytes, exc: pymysql.err.MySQLError) -> None:
        super().__init__(f"line {number} ({_what(statement)}): {_why(statement, exc)}")


def _run(conn: pymysql.Connection, number: int, statement: bytes) -> None:
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            conn.query(statement)
            return
        except pymysql.err.MySQLError as exc:
            # Concurrent INSERTs into one table can deadlock on index gaps; the server
            # rolled the statement back whole, so running it again is safe.
            if exc.args[0] != ER_LOCK_DEADLOCK or attempt == DEADLOCK_RETRIES:
                raise _Failed(number, statement, exc) from None


class _Pool:
    """Connections that run INSERTs in any order (rows of one table or of several); the
    queue is bounded, so at most `parallel` + QUEUE_STATEMENTS statements are in memory."""

    def __init__(self, settings: MySQLSettings, header: list[tuple[int, bytes]]) -> None:
        self.queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(QUEUE_STATEMENTS)
        self.error: BaseException | None = None
        self.conns: list[pymysql.Connection] = []
        self.threads: list[threading.Thread] = []
        try:
            for _ in range(settings.parallel):
                self.conns.append(connect(settings))
                _fast_session(self.conns[-1])
                for number, statement in header:  # the same session as the main connection
                    _run(self.conns[-1], number, statement)
        except BaseException:
            self.close()
            raise
        for conn in self.conns:
            self.threads.append(threading.Thread(target=self._work, args=(conn,), daemon=True))
            self.threads[-1].start()

    def _work(self, conn: pymysql.Connection) -> None:
        while (item := self.queue.get()) is not None:
            try:
                if not self.error:  # after a failure the rest is drained, not loaded
                    _run(conn, *item)
            except BaseException as exc:  # raised by the reader at its next submit or wait
                self.error = self.error or exc
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _raise(self) -> None:
        if self.error:
            raise self.error

    def submit(self, number: int, statement: bytes) -> None:
        self._raise()
        self.queue.put((number, statement))

    def wait(self) -> None:
        """Until every submitted statement has run; raises the first failure."""
        self.queue.join()
        self._raise()

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
        for conn in self.conns:
            with contextlib.suppress(Exception):  # closing a broken connection: best effort
                conn.close()


def _load(
    settings: MySQLSettings,
    conn: pymysql.Connection,
    statements: Iterator[tuple[int, bytes]],
    progress: Callable[[int], None],
) -> None:
    """Run the dump: the header and DDL on `conn`, the rows of every table on a pool,
    concurrently; any other statement after the header (views, routines, triggers, events,
    the footer) first waits for all rows, so no trigger fires on a loaded row."""
    header: list[tuple[int, bytes]] = []  # session settings, replayed on each pool connection
    in_header = True
    pool: _Pool | None = None
    try:
        for number, statement in statements:
            if statement.startswith(_INSERT):
                pool = pool or _Pool(settings, header)
                pool.submit(number, statement)
            else:
                in_header = in_header and not statement.startswith(_TABLE_DDL)
                if in_header and not statement.startswith(_CREATE_DATABASE):
                    header.append((number, statement))
                elif pool and not statement.startswith(_TABLE_DDL):
                    pool.wait()
                _run(conn, number, statement)
            progress(len(statement) + 2)
        if pool:
            pool.wait()
    finally:
        if pool:
            pool.close()


def _disable_events(conn: pymysql.Connection, database: str) -> None:
    """A copy under another name (a drill) must not run the original's scheduled jobs."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", (database,)
        )
        for (name,) in cur.fetchall():
            cur.execute(f"ALTER EVENT {qi(database)}.{qi(name)} DISABLE")


def restore(
    settings: MySQLSettings,
    artifact: Path,
    database: str,
    identity_file: Path | None,
    progress: Callable[[int], None],
) -> None:
    """Drop `database`, recreate it and load `artifact` (a dump of any database) into it."""
    try:
        _check_complete(artifact, identity_file)
    except CorruptArtifact as exc:
        raise TargetError("mysql", f"cannot restore: {exc}") from None
    conn = connect(settings)
    seen: dict = {}
    try:
        _fast_session(conn)
        conn.query(f"DROP DATABASE IF EXISTS {qi(database)}")
        stream = _Reader(read_plain(artifact, identity_file))
        _load(settings, conn, _statements(stream, database, seen), progress)
        if seen.get("source") != qi(database).encode():
            _disable_events(conn, database)
    except _Failed as exc:
        raise TargetError("mysql", f"{artifact.name} {exc}") from None
    except (ValueError, CorruptArtifact) as exc:
        raise TargetError("mysql", f"{artifact.name} is damaged: {exc}") from None
    finally:
        conn.close()
