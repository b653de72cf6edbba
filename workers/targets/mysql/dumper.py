"""One consistent, parallel logical dump of MySQL/MariaDB databases, one artifact each.

Consistency (the mydumper recipe): one connection holds FLUSH TABLES WITH READ LOCK while
every worker connection opens START TRANSACTION WITH CONSISTENT SNAPSHOT, so all workers
read the same point in time; the binlog position, table list and object definitions are
read under that lock, which is released as soon as the non-MVCC tables (MyISAM, Aria) are
dumped.  Without RELOAD (or if the lock waits too long behind a long query) one connection
with a consistent snapshot dumps everything: slower, still consistent for InnoDB.

The SQL text of each row is built by the server (QUOTE/BIN in one CONCAT per row), so
Python only moves one bytes value per row, and escapes the newlines of a whole statement
at once (RENDERING 2: binary values are escaped bytes, not hex, which halved their size
and took a fifth off the dump here); the row count and checksum (sum of CRC32 of each row
received) are computed from the very bytes dumped, before that escaping, so they describe
the dump and a restore is checked against the same rendering.
Measured and not done: having the server join a key range's rows into one value per
INSERT (GROUP_CONCAT) took a third off our CPU but more than that onto the server's
rendering, which is the critical path: the dump ended later.  Cutting tables of 64 MiB
and more into primary key ranges read by whichever connection is free (mydumper's chunks):
the server took 15% longer to read a table's ranges than the whole table, and the dump of
the reference set went from 0.95 to 1.11 s; tables taken largest first already keep both
connections busy to the end there.
"""

from __future__ import annotations

import contextlib
import graphlib
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import MySQLdb
import pymysql

from workers.config import MySQLSettings
from workers.errors import TargetError
from workers.store.codec import ArtifactWriter, Codec
from workers.targets.mysql.common import (
    COMPLETED,
    ER_LOCK_WAIT_TIMEOUT,
    ER_SPECIFIC_ACCESS_DENIED,
    MVCC_ENGINES,
    RENDERING,
    DBConnection,
    base_tables,
    block,
    connect,
    flavor,
    insertable_columns,
    object_names,
    one_line,
    qi,
    row_sql,
    rows,
    scalar,
    user_databases,
    uses_tls,
)
from workers.targets.mysql.reader import batches, connect_reader

log = logging.getLogger(__name__)

STATEMENT_BYTES = 1 << 20  # one multi-row INSERT, well under the default max_allowed_packet
QUEUE_STATEMENTS = 8  # per connection in flight: bounds memory to parallel x 8 MiB
FETCH_ROWS = 2000
LOCK_WAIT_SECONDS = 10  # FTWRL queued behind a long query blocks every writer: give up fast
POLL_SECONDS = 0.5


# -- snapshot ------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    mode: str  # "shared-ftwrl" | "single-connection"
    control: DBConnection  # holds the lock (PyMySQL), or is the only worker (a reader)
    workers: list[MySQLdb.Connection]
    locked: bool
    binlog: dict | None = None
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def unlock(self) -> None:
        with self._mutex:
            if self.locked:
                self.control.query("UNLOCK TABLES")
                self.locked = False

    def close(self) -> None:
        for conn in {id(c): c for c in [self.control, *self.workers]}.values():
            with contextlib.suppress(Exception):  # closing a broken connection: best effort
                conn.close()


def _session(conn: DBConnection) -> None:
    # '' sql_mode: standard quoting in SHOW CREATE and backslash escapes in our literals.
    conn.query("SET SESSION sql_mode = ''")
    conn.query("SET SESSION net_write_timeout = 3600")  # the consumer may stall on disk


def _begin_snapshot(conn: MySQLdb.Connection) -> None:
    _session(conn)
    conn.query("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.query("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")


def _binlog_under_lock(conn: pymysql.Connection, version: str) -> dict | None:
    try:
        status = rows(conn, "SHOW MASTER STATUS")
    except pymysql.err.OperationalError as exc:
        log.warning("binlog position not recorded: %s", exc.args[1])
        return None
    if not status:
        return None  # binary log disabled
    gtid_var = "gtid_binlog_pos" if flavor(version) == "mariadb" else "gtid_executed"
    gtid = scalar(conn, f"SELECT @@GLOBAL.{gtid_var}") or None
    return {"file": status[0]["File"], "position": int(status[0]["Position"]), "gtid": gtid}


def _binlog_of_snapshot(conn: DBConnection, version: str) -> dict | None:
    """MariaDB reports the binlog position matching a consistent snapshot; MySQL cannot
    without a lock, so no position is recorded there."""
    if flavor(version) != "mariadb":
        return None
    found = rows(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'")
    status = {r["Variable_name"]: r["Value"] for r in found}
    file = status.get("Binlog_snapshot_file")
    if not file:
        return None
    return {"file": file, "position": int(status["Binlog_snapshot_position"]), "gtid": None}


def _open_snapshot(settings: MySQLSettings, version: str, tls: bool) -> _Snapshot:
    """The lock on a PyMySQL connection; the snapshots on mysqlclient readers (the rows)."""
    control = connect(settings)
    try:
        control.query(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
        control.query("FLUSH TABLES WITH READ LOCK")
    except pymysql.err.OperationalError as exc:
        control.close()
        if exc.args[0] not in (ER_SPECIFIC_ACCESS_DENIED, ER_LOCK_WAIT_TIMEOUT):
            raise
        log.warning("FLUSH TABLES WITH READ LOCK refused (%s): one connection", exc.args[1])
        reader = connect_reader(settings, tls)
        snap = _Snapshot("single-connection", reader, [reader], locked=False)
        try:
            _begin_snapshot(reader)
            snap.binlog = _binlog_of_snapshot(reader, version)
        except BaseException:
            snap.close()
            raise
        return snap
    snap = _Snapshot("shared-ftwrl", control, [], locked=True)
    try:
        _session(control)
        for _ in range(settings.parallel):
            snap.workers.append(connect_reader(settings, tls))
            _begin_snapshot(snap.workers[-1])
        snap.binlog = _binlog_under_lock(control, version)
    except BaseException:
        snap.close()
        raise
    return snap


# -- schema objects --------------------------------------------------------------------------


def _view_order(database: str, views: dict[str, str]) -> list[str]:
    """Views so that one built on another comes after it."""
    prefix = qi(database) + "."
    graph = graphlib.TopologicalSorter()
    for name in sorted(views):
        graph.add(name, *sorted(o for o in views if o != name and prefix + qi(o) in views[name]))
    return list(graph.static_order())


def _show(conn: DBConnection, what: str, database: str, name: str, column: str) -> dict:
    found = rows(conn, f"SHOW CREATE {what} {qi(database)}.{qi(name)}")
    if not found or not found[0].get(column):
        raise TargetError(
            "mysql",
            f"cannot read the definition of {what} {database}.{name}: the backup user lacks"
            " the privilege (see the grants in workers/targets/mysql.py)",
        )
    return found[0]


def _set_mode(mode: str) -> str:
    return f"SET SESSION sql_mode = '{pymysql.converters.escape_string(mode)}';\n"


def _object_sql(conn: DBConnection, database: str, names: dict[str, list[str]]) -> bytes:
    """DDL of views, routines, triggers and events, in a loadable order (after the data, so
    triggers do not fire while rows are loaded)."""
    out: list[bytes] = []
    prefix = qi(database) + "."
    views = {
        v: _show(conn, "VIEW", database, v, "Create View")["Create View"] for v in names["views"]
    }
    for view in _view_order(database, views):
        # Unqualified, so the view follows the database when it is restored under another name.
        ddl = views[view].replace(prefix, "")
        out.append(f"DROP TABLE IF EXISTS {qi(view)};\nDROP VIEW IF EXISTS {qi(view)};\n".encode())
        out.append(block(ddl))
    for routine in names["routines"]:
        kind, name = routine.split(" ", 1)
        row = _show(conn, kind, database, name, f"Create {kind.title()}")
        out.append((_set_mode(row["sql_mode"]) + f"DROP {kind} IF EXISTS {qi(name)};\n").encode())
        out.append(block(row[f"Create {kind.title()}"], delimited=True))
    for trigger in names["triggers"]:
        row = _show(conn, "TRIGGER", database, trigger, "SQL Original Statement")
        drop = f"DROP TRIGGER IF EXISTS {qi(trigger)};\n"
        out.append((_set_mode(row["sql_mode"]) + drop).encode())
        out.append(block(row["SQL Original Statement"], delimited=True))
    for event in names["events"]:
        row = _show(conn, "EVENT", database, event, "Create Event")
        zone = pymysql.converters.escape_string(row["time_zone"])
        out.append(
            (
                _set_mode(row["sql_mode"])
                + f"SET SESSION time_zone = '{zone}';\nDROP EVENT IF EXISTS {qi(event)};\n"
            ).encode()
        )
        out.append(block(row["Create Event"], delimited=True))
        out.append(b"SET SESSION time_zone = '+00:00';\n")
    return b"".join(out)


# -- rows ----------------------------------------------------------------------------------


def _dump_table(
    conn: MySQLdb.Connection, database: str, table: str, emit: Callable[[bytes], None]
) -> dict:
    ddl = rows(conn, f"SHOW CREATE TABLE {qi(database)}.{qi(table)}")[0]["Create Table"]
    emit(f"\n-- Table {qi(table)}\nDROP TABLE IF EXISTS {qi(table)};\n".encode() + block(ddl))
    columns = insertable_columns(conn, database, table)
    head = f"INSERT INTO {qi(table)} ({', '.join(qi(c['name']) for c in columns)}) VALUES ".encode()
    count = checksum = 0
    batch: list[bytes] = []
    size = 0
    select = f"SELECT {row_sql(columns)} FROM {qi(database)}.{qi(table)}"
    for fetched in batches(conn, select, FETCH_ROWS):
        for (row,) in fetched:
            if row is None:  # CONCAT gave up: the row is bigger than max_allowed_packet
                raise TargetError(
                    "mysql",
                    f"a row of {database}.{table} is larger than max_allowed_packet;"
                    " raise it on the server (it is needed to restore the row too)",
                )
            batch.append(row)
            checksum += zlib.crc32(row)
            size += len(row) + 1
            if size >= STATEMENT_BYTES:
                emit(head + one_line(b",".join(batch)) + b";\n")
                batch, size = [], 0
        count += len(fetched)
    if batch:
        emit(head + one_line(b",".join(batch)) + b";\n")
    return {"rows": count, "checksum": checksum}


# -- parallel, in-order pipeline -------------------------------------------------------------


class _Cancelled(Exception):
    pass


@dataclass(frozen=True)
class _Task:
    database: str
    table: str
    mvcc: bool
    bytes: int = 0  # the server's estimate of the table's size


@dataclass(frozen=True)
class _Done:
    stats: dict


def _order(tasks: list[_Task]) -> list[_Task]:
    """Within each database (its artifacts are written one after the other): tables
    outside the MVCC snapshot first, whose end releases the global read lock, then the
    largest first, so the last table to end is a small one and the connections finish
    together (the reference set's dump: 1.06-1.08 s with the tables by name, 1.00-1.04 s
    largest first)."""
    databases = list(dict.fromkeys(t.database for t in tasks))
    return sorted(tasks, key=lambda t: (databases.index(t.database), t.mvcc, -t.bytes, t.table))


class _Pipeline:
    """Workers take tables in order and stream their SQL into one bounded queue per
    database, each statement as soon as it is made: the tables being dumped side by side
    are interleaved statement by statement (each table's DDL before its rows, which is all
    a load needs), so no connection waits for another's table to end, and at most
    `parallel` x QUEUE_STATEMENTS statements are in memory.  A queue bounded per table and
    read in table order held the second connection to that many statements ahead: the
    dump went at one connection's pace."""

    def __init__(self, snap: _Snapshot, tasks: list[_Task]) -> None:
        self.snap = snap
        self.tasks = tasks
        depth = QUEUE_STATEMENTS * max(len(snap.workers), 1)
        self.queues = {t.database: queue.Queue(depth) for t in tasks}
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self._next = 0
        self._mutex = threading.Lock()
        self._locked_left = sum(not t.mvcc for t in tasks)
        if snap.locked and not self._locked_left:
            snap.unlock()
        self.threads = [
            threading.Thread(target=self._work, args=(conn,), daemon=True) for conn in snap.workers
        ]
        for thread in self.threads:
            thread.start()

    def _take(self) -> _Task | None:
        with self._mutex:
            if self.cancel.is_set() or self._next >= len(self.tasks):
                return None
            self._next += 1
            return self.tasks[self._next - 1]

    def _put(self, task: _Task, item: bytes | _Done) -> None:
        while True:
            try:
                self.queues[task.database].put((task, item), timeout=POLL_SECONDS)
                return
            except queue.Full:
                if self.cancel.is_set():
                    raise _Cancelled from None

    def _table_done(self, task: _Task) -> None:
        if task.mvcc:
            return
        with self._mutex:
            self._locked_left -= 1
            last = self._locked_left == 0
        if last:
            self.snap.unlock()  # every table outside the MVCC snapshot is dumped

    def _work(self, conn: MySQLdb.Connection) -> None:
        while (task := self._take()) is not None:
            try:
                stats = _dump_table(conn, task.database, task.table, lambda b: self._put(task, b))
                self._table_done(task)
                self._put(task, _Done(stats))
            except _Cancelled:
                return
            except BaseException as exc:  # handed to the consumer, which raises it
                with self._mutex:
                    self.error = self.error or exc
                self.cancel.set()
                return

    def items(self, database: str) -> Iterator[tuple[_Task, bytes | _Done]]:
        """The SQL of `database`'s tables as it is made, each table's ending with its
        _Done, until every one of them has ended."""
        left = sum(t.database == database for t in self.tasks)
        while left:
            try:
                task, item = self.queues[database].get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.cancel.is_set():
                    raise self.error or _Cancelled() from None
                continue
            left -= isinstance(item, _Done)
            yield task, item

    def stop(self) -> None:
        self.cancel.set()
        for thread in self.threads:
            thread.join()


# -- artifacts -----------------------------------------------------------------------------


def _header(database: str, charset: str, collation: str, backup_id: str, version: str) -> bytes:
    guard = (
        "/*M!100101 BEGIN NOT ATOMIC DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;"
        " SET SESSION sql_log_bin = {}; END */"
    )
    return (
        (
            f"-- xiehe-backup dump of {qi(database)}, backup {backup_id}, server {version}\n"
            "-- Load: zstd -dc FILE | mariadb  (gzip -dc if .gz; age -d -i KEY FILE | ... if age)\n"
            "-- Another database name: change only the CREATE DATABASE and USE lines below.\n"
            "SET NAMES utf8mb4;\n"
            "SET @OLD_TIME_ZONE = @@TIME_ZONE, TIME_ZONE = '+00:00';\n"
            "SET @OLD_UNIQUE_CHECKS = @@UNIQUE_CHECKS, UNIQUE_CHECKS = 0;\n"
            "SET @OLD_FOREIGN_KEY_CHECKS = @@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS = 0;\n"
            "SET @OLD_SQL_MODE = @@SQL_MODE, SQL_MODE = 'NO_AUTO_VALUE_ON_ZERO';\n"
            "SET @OLD_SQL_LOG_BIN = @@SQL_LOG_BIN;\n"
        ).encode()
        + block(guard.format(0), delimited=True)
        + (
            f"CREATE DATABASE IF NOT EXISTS {qi(database)}"
            f" /*!40100 DEFAULT CHARACTER SET {charset} COLLATE {collation} */;\n"
            f"USE {qi(database)};\n"
        ).encode()
    )


def _footer() -> bytes:
    guard = (
        "/*M!100101 BEGIN NOT ATOMIC DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;"
        " SET SESSION sql_log_bin = @OLD_SQL_LOG_BIN; END */"
    )
    return (
        b"\nSET SQL_MODE = @OLD_SQL_MODE;\n"
        b"SET FOREIGN_KEY_CHECKS = @OLD_FOREIGN_KEY_CHECKS;\n"
        b"SET UNIQUE_CHECKS = @OLD_UNIQUE_CHECKS;\n"
        b"SET TIME_ZONE = @OLD_TIME_ZONE;\n" + block(guard, delimited=True) + COMPLETED
    )


def _write_index(out_dir: Path, backup_id: str, records: list[dict]) -> dict:
    lines = [
        f"# xiehe-backup MySQL full backup {backup_id}: one file per database, load in order:",
        "#   zstd -dc FILE | mariadb     (gzip -dc for .gz; age -d -i KEY FILE | zstd -dc | ...)",
        "# Each file ends with '-- Dump completed'; a file without it is truncated.",
        *[r["file"] for r in records],
    ]
    with ArtifactWriter(out_dir / f"full_backup_{backup_id}.list", Codec("none")) as writer:
        writer.write(("\n".join(lines) + "\n").encode())
        return {**writer.commit(), "kind": "mysql-index"}


@dataclass
class _Plan:
    databases: list[str]
    tasks: list[_Task]
    objects: dict[str, bytes]
    names: dict[str, dict[str, list[str]]]
    charsets: dict[str, tuple[str, str]]


def _plan(conn: DBConnection, databases: list[str]) -> _Plan:
    """Tables, object DDL and charsets: read under the lock (or in the single snapshot)."""
    plan = _Plan(databases, [], {}, {}, {})
    for db in databases:
        found = rows(
            conn,
            "SELECT DEFAULT_CHARACTER_SET_NAME AS cs, DEFAULT_COLLATION_NAME AS co"
            " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (db,),
        )
        if not found:
            raise TargetError("mysql", f"database {db!r} does not exist or is not visible")
        plan.charsets[db] = (found[0]["cs"], found[0]["co"])
        for t in base_tables(conn, db):
            mvcc = t["engine"].lower() in MVCC_ENGINES
            plan.tasks.append(_Task(db, t["name"], mvcc, t["bytes"]))
        plan.names[db] = object_names(conn, db)
        plan.objects[db] = _object_sql(conn, db, plan.names[db])
    plan.tasks = _order(plan.tasks)
    return plan


def dump(
    settings: MySQLSettings,
    out_dir: Path,
    backup_id: str,
    codec: Codec,
    progress: Callable[[int], None],
) -> dict:
    """Dump every configured database (default: all non-system ones) from one snapshot."""
    probe = connect(settings)
    try:
        version = scalar(probe, "SELECT VERSION()")
        databases = list(settings.databases) or user_databases(probe)
        tls = uses_tls(probe)
    finally:
        probe.close()
    snap = _open_snapshot(settings, version, tls)
    result: list[dict] = []
    try:
        plan = _plan(snap.control, databases)
        pipeline = _Pipeline(snap, plan.tasks)
        try:
            _write_databases(plan, pipeline, out_dir, backup_id, codec, progress, version, result)
        finally:
            pipeline.stop()
        index = _write_index(out_dir, backup_id, result)
    except BaseException:
        for art in result:  # no half backup: a failed run leaves no artifact behind
            (out_dir / art["file"]).unlink(missing_ok=True)
        raise
    finally:
        snap.close()
    tables = {db: {} for db in databases}
    for art in result:
        tables[art["source"]] = art.pop("tables")
    return {
        "artifacts": [*result, index],
        "server_version": version,
        "binlog": snap.binlog,
        "snapshot": snap.mode,
        "databases": {
            db: {"tables": tables[db], "rendering": RENDERING, **plan.names[db]} for db in databases
        },
    }


def _write_databases(
    plan: _Plan,
    pipeline: _Pipeline,
    out_dir: Path,
    backup_id: str,
    codec: Codec,
    progress: Callable[[int], None],
    version: str,
    out: list[dict],
) -> None:
    """Write one artifact per database, appending each committed record to `out`."""
    for db in plan.databases:
        with ArtifactWriter(out_dir / f"{db}_{backup_id}.sql", codec) as writer:

            def write(data: bytes, writer: ArtifactWriter = writer) -> None:
                writer.write(data)
                progress(len(data))

            write(_header(db, *plan.charsets[db], backup_id, version))
            tables = {}
            for task, item in pipeline.items(db):
                if isinstance(item, _Done):
                    tables[task.table] = item.stats
                else:
                    write(item)
            tables = dict(sorted(tables.items()))
            write(plan.objects[db])
            write(_footer())
            out.append({**writer.commit(), "kind": "mysql", "source": db, "tables": tables})
