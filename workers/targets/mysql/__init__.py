"""MySQL / MariaDB target: check the server, dump databases, restore one, verify a copy.

Minimal grants (MariaDB 10.11; `backup`/`restore` and the host pattern are examples):

Backup user -- reads everything, changes nothing (tested in tests/test_mysql_target.py):
    GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `medical_system`.* TO 'backup'@'%';
    GRANT SELECT ON `mysql`.`proc` TO 'backup'@'%';
    GRANT RELOAD, BINLOG MONITOR ON *.* TO 'backup'@'%';
    -- Per database, or ON *.* to back up every database (XIEHE_MYSQL_DATABASES empty).
    -- SELECT:          rows.  SHOW VIEW: views.  TRIGGER: triggers.  EVENT: events.
    -- mysql.proc:      routines; without it they are silently invisible to the user
    --                  (MySQL 8: SHOW_ROUTINE, or global SELECT).
    -- RELOAD:          FLUSH TABLES WITH READ LOCK, the shared snapshot that lets
    --                  XIEHE_MYSQL_PARALLEL connections dump at once.  Without it the dump
    --                  is still consistent, on one connection ("single-connection").
    -- BINLOG MONITOR:  SHOW MASTER STATUS, the binlog position for point-in-time recovery
    --                  (MySQL: REPLICATION CLIENT).  Without it no position is recorded.
    -- LOCK TABLES and PROCESS are not needed.

Restore user -- drops and recreates the databases it restores:
    GRANT ALL PRIVILEGES ON `medical_system`.* TO 'restore'@'%';   -- and each drill_% name
    GRANT SET USER ON *.* TO 'restore'@'%';
    -- SET USER (MySQL: SET_USER_ID, or SUPER): recreate views, routines, triggers and
    --                  events with their original DEFINER.
    -- Optional: BINLOG ADMIN (or SUPER) to load with sql_log_bin=0; without it the load is
    --                  written to the binary log (and replicated), which is also correct.
    -- With the binary log on, creating functions also needs log_bin_trust_function_creators=1
    --                  or SUPER.
"""

from __future__ import annotations

from workers.config import MySQLSettings
from workers.targets.mysql.common import (
    RENDERING,
    connect,
    database_checksums,
    flavor,
    object_names,
    scalar,
    user_databases,
)
from workers.targets.mysql.dumper import dump
from workers.targets.mysql.loader import restore

__all__ = ["check", "checksums", "dump", "objects", "restore"]


def check(settings: MySQLSettings) -> dict:
    """Connect and describe the server; TargetError if it is unreachable or refuses us."""
    conn = connect(settings)
    try:
        version = scalar(conn, "SELECT VERSION()")
        return {
            "server_version": version,
            "flavor": flavor(version),
            "binlog": bool(int(scalar(conn, "SELECT @@GLOBAL.log_bin"))),
            "databases": user_databases(conn),
        }
    finally:
        conn.close()


def checksums(
    settings: MySQLSettings, database: str, rendering: int = RENDERING
) -> dict[str, dict]:
    """{table: {rows, checksum}} now, measured exactly as dump() measured the rows it
    rendered so (a backup records its rendering; one made before that has none: 1)."""
    conn = connect(settings)
    try:
        return database_checksums(conn, database, rendering)
    finally:
        conn.close()


def objects(settings: MySQLSettings, database: str) -> dict[str, list[str]]:
    """Names of views, routines ("PROCEDURE p" / "FUNCTION f"), triggers and events."""
    conn = connect(settings)
    try:
        return object_names(conn, database)
    finally:
        conn.close()
