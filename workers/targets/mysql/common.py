"""Connections and catalogue queries shared by the MySQL dumper, loader and verifier."""

from __future__ import annotations

import ssl
from typing import Any, Protocol

import pymysql

from workers.config import SYSTEM_DATABASES, MySQLSettings
from workers.errors import TargetError

# Server error numbers we turn into a sentence a user can act on.
ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_LOCK_WAIT_TIMEOUT = 1205
CR_CONNECTION_ERRORS = (2002, 2003, 2005, 2006, 2013)
CONNECT_TIMEOUT = 10  # s

# Engines whose reads are MVCC: covered by START TRANSACTION WITH CONSISTENT SNAPSHOT.
MVCC_ENGINES = frozenset({"innodb", "rocksdb", "tokudb"})


class DBConnection(Protocol):
    """What the catalogue queries need of a connection: PyMySQL's and mysqlclient's both."""

    def cursor(self) -> Any: ...

    def query(self, sql: str) -> Any: ...


def qi(name: str) -> str:
    """A quoted identifier."""
    return "`" + name.replace("`", "``") + "`"


class _Connection(pymysql.connections.Connection):
    """pymysql's default mode (TLS when the server offers it) builds a new SSL context for
    every connection, reading the system CA store each time: ~30 ms of CPU, several times
    per dump or restore.  That context holds nothing of a connection's, so one serves all."""

    _preferred: ssl.SSLContext | None = None

    def _create_ssl_ctx(self, sslp):
        if sslp:  # explicit TLS options: pymysql's own handling
            return super()._create_ssl_ctx(sslp)
        if _Connection._preferred is None:
            _Connection._preferred = super()._create_ssl_ctx(sslp)
        return _Connection._preferred


def refusal(settings: MySQLSettings, database: str | None, exc: Exception) -> TargetError:
    """A refused connection (either driver: both carry the server's error number and text)
    as a sentence a user can act on, without the password."""
    where = f"{settings.host}:{settings.port}"
    code, text = exc.args[0], exc.args[1] if len(exc.args) > 1 else str(exc)
    if code == ER_ACCESS_DENIED:
        return TargetError(
            "mysql", f"access denied for user {settings.user!r} at {where}: wrong user or password"
        )
    if code == ER_DBACCESS_DENIED:
        return TargetError("mysql", f"user {settings.user!r} may not use database {database!r}")
    if code in CR_CONNECTION_ERRORS:
        return TargetError("mysql", f"cannot reach the server at {where}: {text}")
    return TargetError("mysql", f"cannot connect to {where}: {text}")


def prepare(conn: DBConnection) -> None:
    """Every connection's session: TIMESTAMP values travel as UTC."""
    conn.query("SET SESSION time_zone = '+00:00'")


def connect(settings: MySQLSettings, database: str | None = None) -> pymysql.Connection:
    """A utf8mb4, UTC, autocommit connection; errors become TargetError without the password."""
    try:
        conn = _Connection(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
        )
    except pymysql.err.OperationalError as exc:
        raise refusal(settings, database, exc) from None
    prepare(conn)
    return conn


def uses_tls(conn: DBConnection) -> bool:
    """Whether the connection is encrypted (PyMySQL takes TLS whenever the server offers it)."""
    return bool(rows(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0]["Value"])


def rows(conn: DBConnection, sql: str, args: tuple = ()) -> list[dict]:
    """The result as dicts; plain DB-API, so it serves connections of either driver."""
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def scalar(conn: DBConnection, sql: str, args: tuple = ()):
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        row = cur.fetchone()
        return row[0] if row else None


def flavor(version: str) -> str:
    return "mariadb" if "mariadb" in version.lower() else "mysql"


def user_databases(conn: DBConnection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        return sorted(r[0] for r in cur.fetchall() if r[0].lower() not in SYSTEM_DATABASES)


def base_tables(conn: DBConnection, database: str) -> list[dict]:
    """[{name, engine, bytes}] of a database's base tables, by name; `bytes` is the
    server's estimate of their data's size (0 when it has none)."""
    found = rows(
        conn,
        "SELECT TABLE_NAME AS name, COALESCE(ENGINE, '') AS engine,"
        " COALESCE(DATA_LENGTH, 0) AS bytes FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
        (database,),
    )
    return [{"name": r["name"], "engine": r["engine"], "bytes": int(r["bytes"])} for r in found]


def object_names(conn: DBConnection, database: str) -> dict[str, list[str]]:
    """Names of the database's views, routines ("FUNCTION f"), triggers and events."""

    def names(sql: str) -> list[str]:
        with conn.cursor() as cur:
            cur.execute(sql, (database,))
            return sorted(" ".join(r) for r in cur.fetchall())

    return {
        "views": names(
            "SELECT TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'VIEW'"
        ),
        "routines": names(
            "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES"
            " WHERE ROUTINE_SCHEMA = %s"
        ),
        "triggers": names(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"
        ),
        "events": names("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"),
    }


BINARY_TYPES = frozenset(
    {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry", "point"}
    | {"linestring", "polygon", "multipoint", "multilinestring", "multipolygon"}
    | {"geometrycollection"}
)
NUMERIC_TYPES = frozenset(
    {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "numeric"}
    | {"float", "double", "real", "year"}
)
TEXT_TYPES = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json", "enum", "set"}
)


# How rows are rendered, recorded per database, so that a restore is checked against the
# checksums the same rendering gives.  1: binary as X'hex', newlines of text escaped by the
# server (REPLACE).  2: binary as _binary'escaped bytes' (a third smaller than hex, and less
# work for the server), and every newline escaped by the dumper (one_line).
RENDERING = 2


def _literal(column: str, data_type: str, rendering: int) -> str:
    """SQL that renders one column as a literal (never NULL: NULL becomes the word NULL)."""
    c = qi(column)
    if data_type in BINARY_TYPES and rendering >= 2:
        return f"IF({c} IS NULL, 'NULL', CONCAT('_binary', QUOTE({c})))"
    if data_type in BINARY_TYPES:
        return f"IF({c} IS NULL, 'NULL', CONCAT('X''', HEX({c}), ''''))"
    if data_type == "bit":
        return f"IF({c} IS NULL, 'NULL', CONCAT('b''', BIN({c}), ''''))"
    if data_type in NUMERIC_TYPES:
        return f"COALESCE(CONCAT({c}), 'NULL')"
    quoted = f"CONVERT(QUOTE({c}) USING utf8mb4)"
    if data_type in TEXT_TYPES and rendering < 2:  # keep every INSERT on one line
        return rf"REPLACE(REPLACE({quoted}, '\n', '\\n'), '\r', '\\r')"
    return quoted


def one_line(rows: bytes) -> bytes:
    """Rendered rows (RENDERING 2) on one line: a newline or carriage return occurs only
    inside a quoted literal (QUOTE leaves them as they are), where its escape means it."""
    return rows.replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def insertable_columns(conn: DBConnection, database: str, table: str) -> list[dict]:
    """Insertable columns (generated ones are recomputed on load), in table order."""
    return rows(
        conn,
        "SELECT COLUMN_NAME AS name, DATA_TYPE AS type FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
        " AND EXTRA NOT REGEXP 'VIRTUAL|STORED|PERSISTENT' ORDER BY ORDINAL_POSITION",
        (database, table),
    )


def row_sql(columns: list[dict], rendering: int = RENDERING) -> str:
    """SQL rendering a row as the bytes of its VALUES tuple, e.g. (1,'a',_binary'\\0',NULL)."""
    render = ", ',', ".join(_literal(c["name"], c["type"].lower(), rendering) for c in columns)
    return f"CAST(CONCAT('(', {render}, ')') AS BINARY)"


def database_checksums(
    conn: pymysql.Connection, database: str, rendering: int = RENDERING
) -> dict[str, dict]:
    """{table: {rows, checksum}} where checksum is the sum of CRC32 of each row's rendered
    VALUES tuple: the dumper sums the same CRC32 over the rows it receives, so a copy
    matches exactly when it holds the same rows.  (CHECKSUM TABLE does honour a snapshot,
    but on MariaDB 10.11 it gave different values for identical copies of a table with a
    virtual column, so it cannot be what a restore is judged by.)"""
    out = {}
    for table in base_tables(conn, database):
        name = table["name"]
        expr = row_sql(insertable_columns(conn, database, name), rendering)
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT COUNT(*), COALESCE(SUM(CRC32({expr})), 0) FROM {qi(database)}.{qi(name)}"
            )
            count, crc = cur.fetchone()
        out[name] = {"rows": int(count), "checksum": int(crc)}
    return out


# The dump format, shared by the dumper and the loader.  Every statement is either one line
# ending in ";\n" (rows: the dumper escapes newlines inside literals) or a block: a line
# "-- xiehe:block <n>" (a comment for the mariadb client) followed by exactly n bytes that
# the client reads as usual, wrapped in DELIMITER ;; when the statement has a body.
BLOCK = b"-- xiehe:block "
COMPLETED = b"-- Dump completed\n"
DELIMITED_HEAD = b"DELIMITER ;;\n"
DELIMITED_TAIL = b"\n;;\nDELIMITER ;\n"


def block(statement: str, delimited: bool = False) -> bytes:
    body = statement.encode()
    body = DELIMITED_HEAD + body + DELIMITED_TAIL if delimited else body + b";\n"
    return BLOCK + str(len(body)).encode() + b"\n" + body


def unblock(body: bytes) -> bytes:
    """The statement inside a block's n bytes; ValueError if they are not a block."""
    if body.startswith(DELIMITED_HEAD) and body.endswith(DELIMITED_TAIL):
        return body[len(DELIMITED_HEAD) : -len(DELIMITED_TAIL)]
    if body.endswith(b";\n"):
        return body[:-2]
    raise ValueError("malformed block")
