"""Load a dump made by mysql_dump into a database, possibly under another name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pymysql

from workers.config import MySQLSettings
from workers.errors import TargetError
from workers.store.codec import CorruptArtifact, open_plain, read_plain
from workers.targets.mysql_common import (
    BLOCK,
    COMPLETED,
    ER_SPECIFIC_ACCESS_DENIED,
    connect,
    qi,
    unblock,
)

_CREATE_DB = re.compile(rb"^CREATE DATABASE IF NOT EXISTS (`(?:[^`]|``)+`)(.*)$", re.S)
_USE = b"USE "


def _check_complete(artifact: Path, identity_file: Path | None) -> None:
    """Read the artifact to its end before anything is dropped: a truncated or corrupt
    file must not cost the database it was meant to restore."""
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


def _statements(stream: BinaryIO, target: str, seen: dict) -> Iterator[tuple[int, bytes]]:
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


def _what(statement: bytes) -> str:
    """The start of a statement, for an error message (never row values)."""
    return statement.split(b" VALUES ", 1)[0][:120].decode(errors="replace")


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
        with open_plain(artifact, identity_file) as stream:
            for number, statement in _statements(stream, database, seen):
                try:
                    conn.query(statement)
                except pymysql.err.MySQLError as exc:
                    raise TargetError(
                        "mysql",
                        f"{artifact.name} line {number} ({_what(statement)}): {exc.args[-1]}",
                    ) from None
                progress(len(statement) + 2)
        if seen.get("source") != qi(database).encode():
            _disable_events(conn, database)
    except (ValueError, CorruptArtifact) as exc:
        raise TargetError("mysql", f"{artifact.name} is damaged: {exc}") from None
    finally:
        conn.close()
