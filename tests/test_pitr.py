"""Point-in-time recovery on real processes: a private MariaDB with the binlog on, the real
archiver (SIGKILLed and restarted during writes), a real worker, the real CLI."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymysql
import pytest

from tests.conftest import base_env, unique
from tests.support.cli import cli
from tests.support.mariadb import MariaDB
from workers import config
from workers.targets import binlog

ARCHIVER_PASSWORD = 'Arch"iv\\er-s3cret'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mariadb")
    srv = MariaDB(
        workdir, f"--log-bin={workdir}/data/mysql-bin", "--binlog-format=ROW", "--server-id=1"
    )
    srv.sql(
        "CREATE USER 'archiver'@'127.0.0.1' IDENTIFIED BY "
        f"'{pymysql.converters.escape_string(ARCHIVER_PASSWORD)}'",
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'archiver'@'127.0.0.1'",
    )
    yield srv
    srv.stop()


class Archiver:
    """`xiehe-backup binlog-archiver` as a process we may SIGKILL."""

    def __init__(self, env: dict, log: Path) -> None:
        self.env, self.log, self.proc = env, log, None

    def start(self) -> Archiver:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "producers.cli.main", "binlog-archiver"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class Writer(threading.Thread):
    """Inserts rows one transaction at a time, noting when each insert began and returned."""

    def __init__(self, server: MariaDB, db: str) -> None:
        super().__init__(daemon=True)
        self.server, self.db = server, db
        self.done = threading.Event()
        self.rows: list[tuple[int, float, float]] = []  # (n, began, committed)

    def run(self) -> None:
        conn = self.server.connect(self.db)
        n = len(self.rows)
        with conn.cursor() as cur:
            while not self.done.is_set():
                n += 1
                began = time.time()
                cur.execute("INSERT INTO events (n, note) VALUES (%s, %s)", (n, f"检查 {n}"))
                self.rows.append((n, began, time.time()))
                time.sleep(0.005)
        conn.close()

    def finish(self) -> None:
        self.done.set()
        self.join()


@pytest.fixture
def pitr_env(server, broker, tmp_path):
    broker.client().flushall()
    db = unique("pitr")
    server.sql(
        f"CREATE DATABASE `{db}`",
        f"CREATE TABLE `{db}`.events (id INT PRIMARY KEY AUTO_INCREMENT, n INT NOT NULL,"
        " note VARCHAR(64)) CHARSET utf8mb4",
        f"CREATE TABLE `{db}`.keepme (id INT PRIMARY KEY, v VARCHAR(16))",
        f"INSERT INTO `{db}`.keepme VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    env = base_env(broker.url, tmp_path / "backups")
    env.update(
        XIEHE_MYSQL_HOST="127.0.0.1", XIEHE_MYSQL_PORT=str(server.port), XIEHE_MYSQL_USER="root",
        XIEHE_MYSQL_DATABASES=db,
    )  # fmt: skip
    archiver_env = {
        **env, "XIEHE_MYSQL_USER": "archiver", "XIEHE_MYSQL_PASSWORD": ARCHIVER_PASSWORD
    }  # fmt: skip
    archiver = Archiver(archiver_env, tmp_path / "archiver.log").start()
    yield db, env, archiver
    archiver.stop()
    server.sql(f"DROP DATABASE IF EXISTS `{db}`")


def _state(env: dict) -> dict:
    return json.loads((Path(env["XIEHE_BACKUP_DIR"]) / "binlog" / "state.json").read_text())


def _wait_synced(env: dict, server: MariaDB, timeout: float = 30) -> dict:
    """Until the archive holds everything the server has written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            state = _state(env)
            status = server.sql("SHOW MASTER STATUS")[0]
            if (state["file"], state["position"]) == (status[0], status[1]):
                return state
        time.sleep(0.2)
    raise AssertionError("the archiver did not catch up")


def _server_time(server: MariaDB, epoch: int) -> str:
    """`epoch` written in the server's own time zone, as a user would type it."""
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = @@GLOBAL.time_zone")
        cur.execute("SELECT DATE_FORMAT(FROM_UNIXTIME(%s), '%%Y-%%m-%%d %%H:%%i:%%s')", (epoch,))
        (text,) = cur.fetchone()
    conn.close()
    return text


def test_restore_to_a_moment_across_an_archiver_crash(server, pitr_env, worker_factory):
    db, env, archiver = pitr_env
    worker_factory(env)
    writer = Writer(server, db)
    writer.start()
    time.sleep(1.0)
    backup = cli(env, "backup", "--only", "mysql", "--reason", "pitr test")
    assert backup.returncode == 0, backup.stderr
    backup_id = backup.stdout.strip().splitlines()[-1]
    time.sleep(0.5)
    archiver.kill()  # mid-write; the new one resumes from the newest archived file
    server.sql("FLUSH BINARY LOGS")  # and the server rotates while none is running
    time.sleep(0.7)
    archiver.start()
    moment = math.ceil(time.time()) + 1
    while time.time() < moment + 1.5:
        time.sleep(0.1)
    writer.finish()
    server.sql("DROP TABLE keepme", db=db)  # the mistake
    _wait_synced(env, server)

    text = _server_time(server, moment)
    dry = cli(env, "restore", "--to", text, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert backup_id in dry.stdout and "mysql-bin.000002" in dry.stdout, dry.stdout
    assert server.sql("SHOW TABLES", db=db) == [("events",)]  # the dry run changed nothing
    archived = binlog.archived_files(Path(env["XIEHE_BACKUP_DIR"]) / "binlog")
    gtids = [e for e in binlog.events(archived[-1]) if e.gtid]
    by_gtid = cli(env, "restore", "--to-gtid", gtids[-2].gtid, "--dry-run")
    assert f"{archived[-1].name}:{gtids[-1].position} (excluded)" in by_gtid.stdout, by_gtid
    by_position = cli(env, "restore", "--to-position", f"{archived[-1].name}:4", "--dry-run")
    assert by_position.returncode == 0 and backup_id in by_position.stdout, by_position

    restored = cli(env, "restore", "--to", text, "--yes")
    assert restored.returncode == 0, restored.stderr + restored.stdout

    manifest = json.loads(
        (Path(env["XIEHE_BACKUP_DIR"]) / f"manifest_{backup_id}.json").read_text()
    )
    in_backup = manifest["mysql"]["databases"][db]["tables"]["events"]["rows"]
    present = {n for (n,) in server.sql("SELECT n FROM events", db=db)}
    committed_before = {n for n, _, committed in writer.rows if committed < moment}
    began_after = {n for n, began, _ in writer.rows if began >= moment}
    assert len(committed_before) > in_backup + 50 and began_after  # the replay added rows
    assert committed_before <= present, sorted(committed_before - present)[:10]
    assert not present & began_after, sorted(present & began_after)[:10]
    assert server.sql("SELECT * FROM keepme ORDER BY id", db=db) == [
        (1, "a"), (2, "b"), (3, "c")
    ]  # fmt: skip


def test_archive_is_whole_after_kills_and_idle_is_not_lag(server, pitr_env):
    db, env, archiver = pitr_env
    writer = Writer(server, db)
    writer.start()
    for _ in range(3):
        time.sleep(0.8)
        archiver.kill()
        server.sql("FLUSH BINARY LOGS")
        time.sleep(0.3)
        archiver.start()
    settings = config.load(env)
    time.sleep(2.0)
    samples = []
    for _ in range(8):  # under steady writes the RPO stays within 5 s
        samples.append(binlog.rpo_seconds(settings))
        time.sleep(0.5)
    writer.finish()
    assert all(s is not None and s < 5 for s in samples), samples
    state = _wait_synced(env, server)

    # Every archived file is the server's file, byte for byte (except the format
    # description's in-use flag, which a finished copy clears).
    datadir = server.dir / "data"
    archive = Path(env["XIEHE_BACKUP_DIR"]) / "binlog"
    names = [name for name, *_ in server.sql("SHOW BINARY LOGS")]
    first = binlog.archived_files(archive)[0].name
    for name in names[names.index(first) :]:
        mine, theirs = (
            bytearray((archive / name).read_bytes()),
            bytearray((datadir / name).read_bytes()),
        )
        mine[21] = theirs[21] = 0
        assert mine == theirs, name
        assert (archive / name).stat().st_mode & 0o777 == 0o600
    assert archive.stat().st_mode & 0o777 == 0o700

    # The password is on no command line, in no state.
    pids = [archiver.proc.pid, state["child_pid"]]
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert ARCHIVER_PASSWORD not in argv and "password" not in argv, argv
    cnf = next(a for a in Path(f"/proc/{pids[1]}/cmdline").read_bytes().decode().split("\0")
               if a.startswith("--defaults-extra-file="))  # fmt: skip
    assert Path(cnf.split("=", 1)[1]).stat().st_mode & 0o777 == 0o600
    assert ARCHIVER_PASSWORD not in json.dumps(state)

    # Idle: the last event ages, the RPO does not.
    time.sleep(4)
    rpo = binlog.rpo_seconds(settings)
    assert rpo is not None and rpo < 2.5, rpo
    assert time.time() - _state(env)["last_event_at"] > 4
    assert (
        "xiehe_backup_binlog_rpo_seconds"
        in (Path(env["XIEHE_BACKUP_DIR"]) / ".metrics" / "xiehe_binlog.prom").read_text()
    )
