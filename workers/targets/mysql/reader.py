"""Connections whose result rows are read in C (mysqlclient), for the dumper's row streams.

PyMySQL parses every row packet in Python: reading the reference set's 150,000 rendered
rows cost 1.24 s of CPU there, against 0.31 s through mysqlclient's C reader (which also
lets go of the GIL while it waits on the socket), and the dump is CPU-bound.  The dump's
snapshot connections are readers (a table's DDL and columns are read there too, through the
driver-neutral helpers of common); the lock, the probe and restores stay on PyMySQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import MySQLdb
import MySQLdb.cursors

from workers.config import MySQLSettings
from workers.targets.mysql.common import CONNECT_TIMEOUT, prepare, refusal

Error = MySQLdb.Error


def connect_reader(settings: MySQLSettings, tls: bool) -> MySQLdb.Connection:
    """A utf8mb4, UTC, autocommit connection like common.connect's.

    `tls`: the server offered TLS to PyMySQL, which took it; the C client is asked for it
    outright, since it does not take it by itself.  "localhost" stays TCP, as for PyMySQL
    (the C client would look for a Unix socket, which a server in a container does not
    share)."""
    host = "127.0.0.1" if settings.host == "localhost" else settings.host
    try:
        conn = MySQLdb.connect(
            host=host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            **({"ssl_mode": "REQUIRED"} if tls else {}),
        )
    except MySQLdb.OperationalError as exc:
        raise refusal(settings, None, exc) from None
    prepare(conn)
    return conn


def batches(conn: MySQLdb.Connection, sql: str, size: int) -> Iterator[tuple[tuple, ...]]:
    """The rows of one query, `size` at a time, streamed (never the whole result in memory)."""
    with conn.cursor(MySQLdb.cursors.SSCursor) as cur:
        cur.execute(sql)
        while fetched := cur.fetchmany(size):
            yield fetched
