"""A private MariaDB server (own datadir and port) that a test may stop and start again."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pymysql

from tests.support.servers import free_port


class MariaDB:
    """`extra`: more server options (tests of point-in-time recovery turn the binlog on)."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.extra = extra or ("--skip-log-bin",)
        self.dir = workdir
        self.datadir = workdir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "mariadb.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)  # never /tmp: two servers would share names
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.start()

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - the server owns it for its lifetime
        self.proc = subprocess.Popen(
            [
                shutil.which("mariadbd") or "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.dir / 'mysqld.sock'}",
                f"--pid-file={self.dir / 'mysqld.pid'}",
                f"--tmpdir={self.dir / 'tmp'}",
                "--user=root",
                *self.extra,
                "--innodb-buffer-pool-size=256M",
                "--innodb-log-file-size=256M",
                "--innodb-flush-log-at-trx-commit=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self.log.read_text()[-2000:]}")
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.2)
        raise RuntimeError("mariadbd did not start")

    def connect(self, db: str | None = None, **kw) -> pymysql.Connection:
        args = {"user": "root", "password": "", **kw}
        return pymysql.connect(
            host="127.0.0.1", port=self.port, database=db, autocommit=True, **args
        )

    def sql(self, *statements: str, db: str | None = None) -> list:
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(120)

    def fill_big(self, db: str, rows_log2: int) -> int:
        """A table of 2**rows_log2 rows of ~300 random bytes, doubled with INSERT ... SELECT."""
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{db}`")
            cur.execute(
                f"CREATE TABLE `{db}`.big (id INT PRIMARY KEY AUTO_INCREMENT, "
                "a CHAR(64), b CHAR(64), c CHAR(64), d CHAR(64), n BIGINT)"
            )
            cur.execute(
                f"INSERT INTO `{db}`.big (a, b, c, d, n) VALUES "
                "(SHA2(RAND(), 256), SHA2(RAND(), 256), SHA2(RAND(), 256), SHA2(RAND(), 256), 1)"
            )
            for _ in range(rows_log2):
                cur.execute(
                    f"INSERT INTO `{db}`.big (a, b, c, d, n) SELECT SHA2(RAND(), 256), b, "
                    f"SHA2(RAND(), 256), d, n + id FROM `{db}`.big"
                )
            cur.execute(f"SELECT COUNT(*) FROM `{db}`.big")
            (count,) = cur.fetchone()
        conn.close()
        return count
