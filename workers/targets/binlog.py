"""Continuous binary-log archiving and replay, for point-in-time recovery.

Archiver: a supervised `mariadb-binlog --read-from-remote-server --raw --stop-never` child
(the server's own tool writes byte-exact binlog files, readable by the same tool at replay
time; a Python replication library would have to re-serialise every event).  It writes
into backups/binlog/; when it or the server dies it is restarted from the newest archived
file, which it rewrites from the start, so there is never a gap.  A lock file (inherited by
the child, which also dies with its parent) keeps two archivers from writing one file.

RPO: each second the archiver reads the new events' headers (their timestamps) and the
server's SHOW MASTER STATUS.  When the archive holds everything the server has written, the
archive is complete up to now, so an idle server is not mistaken for lag; otherwise it is
complete up to the last archived event's time.  rpo_seconds() = now - that moment.

Grants of the archiver's user (MariaDB 10.11):
    GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'archiver'@'%';
Replay (restore --to) needs, besides the restore grants of workers/targets/mysql.py,
    GRANT BINLOG REPLAY ON *.* TO 'restore'@'%';   -- BINLOG statements, session server_id
and BINLOG ADMIN (or SUPER) to replay without writing the replayed events to the binlog again.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import redis

from workers.config import MySQLSettings, Settings, _int
from workers.errors import TargetError
from workers.store import atomic
from workers.targets.mysql.common import connect, rows

log = logging.getLogger("xiehe.binlog")

STATE_KEY = "xiehe:binlog:state"
STATE_FILE = "state.json"
LOCK_FILE = ".archiver.lock"
HINT = (
    "point-in-time recovery needs the binary log: in my.cnf [mysqld] set log_bin=mysql-bin, "
    "binlog_format=ROW, server_id=1 (any non-zero id), expire_logs_days=7, then restart MySQL"
)
POLL_SECONDS = 1.0
STALL_SECONDS = 20.0  # the server moved on and the child wrote nothing: it hangs, restart it
RESTART_BACKOFF = (1, 2, 5, 10)
CHUNK = 1 << 20

# Binlog v4 event header: timestamp, type, server id, event size, next position, flags.
HEADER = struct.Struct("<IBIIIH")
MAGIC = b"\xfebin"
GTID_EVENT = 162  # MariaDB: seq_no (8 bytes), domain id (4) after the header
_NUMBERED = re.compile(r"^(?P<base>[^/]+)\.(?P<number>\d{6,})$")


# -- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiverSettings:
    directory: Path
    max_lag: int  # seconds of RPO before an alert


def archiver_settings(settings: Settings, env: dict | None = None) -> ArchiverSettings:
    env = os.environ if env is None else env
    return ArchiverSettings(
        directory=settings.backup_dir / "binlog",
        max_lag=_int(env, "XIEHE_BINLOG_MAX_LAG_SECONDS", 30, minimum=1),
    )


def _tool(name: str, fallback: str) -> str:
    found = shutil.which(name) or shutil.which(fallback)
    if not found:
        raise TargetError("binlog", f"{name} is not installed (Debian: apt-get install {name})")
    return found


# -- the archive -------------------------------------------------------------------------


def archived_files(directory: Path) -> list[Path]:
    """The archived binlog files, oldest first (by sequence number)."""
    found = [p for p in directory.glob("*") if _NUMBERED.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: int(_NUMBERED.match(p.name)["number"]))


def file_number(name: str) -> int:
    match = _NUMBERED.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a binlog file name (like mysql-bin.000042)")
    return int(match["number"])


@dataclass(frozen=True)
class Event:
    position: int  # where the event starts in its file
    end: int
    timestamp: int
    type: int
    server_id: int
    gtid: str | None  # "domain-server-seq" for a GTID event


def events(path: Path, start: int = 4) -> Iterator[Event]:
    """The complete events of an archived file from `start` (an event boundary); a partial
    last event (the file is being written) ends the iteration."""
    with open(path, "rb", buffering=CHUNK) as fh:
        if fh.read(4) != MAGIC:
            return
        position = max(start, 4)
        fh.seek(position)
        while len(head := fh.read(HEADER.size)) == HEADER.size:
            timestamp, kind, server_id, size, _, _ = HEADER.unpack(head)
            if size < HEADER.size:
                return  # not an event: a file being rewritten
            body = fh.read(size - HEADER.size)
            if len(body) != size - HEADER.size:
                return
            gtid = None
            if kind == GTID_EVENT:
                seq, domain = struct.unpack_from("<QI", body)
                gtid = f"{domain}-{server_id}-{seq}"
            yield Event(position, position + size, timestamp, kind, server_id, gtid)
            position += size


def creation_time(path: Path) -> int | None:
    """The timestamp of the file's first event (its format description: when it was opened)."""
    return next((e.timestamp for e in events(path)), None)


# -- server checks -----------------------------------------------------------------------


def binlog_problems(settings: MySQLSettings) -> list[str]:
    """What keeps the server's binlog from serving point-in-time recovery ([] when ready)."""
    conn = connect(settings)
    try:
        found = rows(
            conn,
            "SELECT @@GLOBAL.log_bin AS on_, @@GLOBAL.binlog_format AS format_,"
            " @@GLOBAL.server_id AS id_",
        )[0]
    finally:
        conn.close()
    problems = []
    if not int(found["on_"]):
        problems.append("the binary log is off (log_bin)")
    if str(found["format_"]).upper() != "ROW":
        problems.append(f"binlog_format is {found['format_']}, not ROW")
    if not int(found["id_"]):
        problems.append("server_id is 0")
    return problems


def server_position(settings: MySQLSettings) -> tuple[str, int] | None:
    """(file, position) the server has written up to; None if it cannot be read."""
    try:
        conn = connect(settings)
    except TargetError:
        return None
    try:
        found = rows(conn, "SHOW MASTER STATUS")
        return (found[0]["File"], int(found[0]["Position"])) if found else None
    except pymysql.MySQLError:
        return None
    finally:
        conn.close()


def first_server_file(settings: MySQLSettings) -> str:
    conn = connect(settings)
    try:
        found = rows(conn, "SHOW BINARY LOGS")
    except pymysql.MySQLError as exc:
        raise TargetError(
            "binlog", f"cannot list the server's binary logs: {exc.args[-1]}"
        ) from None
    finally:
        conn.close()
    if not found:
        raise TargetError("binlog", HINT)
    return found[0]["Log_name"]


# -- credentials -------------------------------------------------------------------------


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def defaults_file(settings: MySQLSettings) -> Iterator[Path]:
    """A 0600 [client] option file in a private 0700 directory: the password never
    appears on a command line; removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="xiehe-binlog-"))
    path = directory / "client.cnf"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                "[client]\n"
                f"host={settings.host}\nport={settings.port}\n"
                f"user={_option_value(settings.user)}\n"
                f"password={_option_value(settings.password)}\n"
            )
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- state and RPO -----------------------------------------------------------------------


def read_state(settings: Settings) -> dict | None:
    """The archiver's last published state: from the broker, else from state.json."""
    with contextlib.suppress(redis.RedisError, ValueError):
        client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2)
        raw = client.get(STATE_KEY)
        if raw:
            return json.loads(raw)
    path = settings.backup_dir / "binlog" / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rpo_seconds(settings: Settings, now: float | None = None) -> float | None:
    """Seconds of committed data not yet archived (an upper bound); None: no archiver ever ran.
    An idle server whose every event is archived has an RPO of about a second, not its
    idle time; a dead archiver's RPO grows from the moment it last saw the archive whole."""
    state = read_state(settings)
    if not state or state.get("complete_until") is None:
        return None
    return max(0.0, (time.time() if now is None else now) - float(state["complete_until"]))


def metrics_text(state: dict, now: float) -> str:
    """Prometheus textfile lines; complete_until lets an alert compute the RPO itself
    (time() - it) even when the archiver has died and stopped rewriting this file."""
    rpo = max(0.0, now - state["complete_until"]) if state.get("complete_until") else -1
    lines = [
        "# HELP xiehe_backup_binlog_rpo_seconds seconds of commits not yet archived",
        "# TYPE xiehe_backup_binlog_rpo_seconds gauge",
        f"xiehe_backup_binlog_rpo_seconds {rpo:g}",
        "# HELP xiehe_backup_binlog_complete_until_seconds the archive holds every commit before",
        "# TYPE xiehe_backup_binlog_complete_until_seconds gauge",
        f"xiehe_backup_binlog_complete_until_seconds {state.get('complete_until') or 0:g}",
    ]
    return "\n".join(lines) + "\n"


# -- the archiver ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervisor dies, so no orphan keeps writing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _alert(event: dict) -> None:
    try:
        from workers.ops.alerts import notify
    except ImportError:
        return
    notify(event)


class Archiver:
    """Supervise the streaming child; publish the archive's state every second."""

    def __init__(self, settings: Settings, env: dict | None = None) -> None:
        if settings.mysql is None:
            raise TargetError("binlog", "XIEHE_MYSQL_HOST is not set: nothing to archive")
        self.settings = settings
        self.conf = archiver_settings(settings, env)
        self.dir = self.conf.directory
        self.child: subprocess.Popen | None = None
        self.stop = threading.Event()
        self.state: dict = self._load_state()
        self.alerting = False
        self.broker = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2)

    def _load_state(self) -> dict:
        try:
            return json.loads((self.dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    # - lock and directory

    def _lock(self, wait: float) -> int:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TargetError(
                        "binlog", f"another archiver is writing {self.dir} (its lock is held)"
                    ) from None
                time.sleep(0.2)

    # - the child

    def _start_child(self, lock_fd: int, cnf: Path) -> None:
        files = archived_files(self.dir)
        first = files[-1].name if files else first_server_file(self.settings.mysql)
        for path in files:
            os.chmod(path, 0o600)
        argv = [
            _tool("mariadb-binlog", "mysqlbinlog"),
            f"--defaults-extra-file={cnf}",  # must be the first option
            "--read-from-remote-server",
            "--raw",
            "--stop-never",
            f"--result-file={self.dir}/",
            first,
        ]
        self.child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            umask=0o077,
            pass_fds=(lock_fd,),  # the lock lives as long as the child too
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._log_child, args=(self.child,), daemon=True).start()
        log.info("streaming the binlog from %s (pid %d)", first, self.child.pid)

    @staticmethod
    def _log_child(child: subprocess.Popen) -> None:
        for line in child.stderr:
            log.warning("mariadb-binlog: %s", line.decode(errors="replace").rstrip())

    def _stop_child(self) -> None:
        if self.child and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()

    # - the archive's state

    def _scan(self) -> None:
        """Advance (file, position, last_event_at) over the events archived since."""
        s = self.state
        for path in archived_files(self.dir):
            if s.get("file") and file_number(path.name) < file_number(s["file"]):
                continue
            if path.name != s.get("file"):
                s["file"], s["position"] = path.name, 4
            for event in events(path, s["position"]):
                s["position"] = event.end
                if event.timestamp:  # 0: an artificial event of the stream
                    s["last_event_at"] = max(s.get("last_event_at") or 0, event.timestamp)

    def _publish(self, now: float) -> None:
        s = self.state
        server = server_position(self.settings.mysql)
        archived = (s.get("file"), s.get("position"))
        if server is not None:
            s["server"] = {"file": server[0], "position": server[1]}
            if server == archived:
                s["synced_at"] = now
        s["complete_until"] = max(s.get("synced_at") or 0, s.get("last_event_at") or 0) or None
        s["updated_at"] = now
        s["child_pid"] = self.child.pid if self.child else None
        s["rpo_seconds"] = round(now - s["complete_until"], 3) if s["complete_until"] else None
        atomic.write_json(self.dir / STATE_FILE, s)
        metrics_dir = self.settings.backup_dir / ".metrics"
        metrics_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_text(metrics_dir / "xiehe_binlog.prom", metrics_text(s, now))
        with contextlib.suppress(redis.RedisError):
            self.broker.set(STATE_KEY, json.dumps(s))
        self._check_lag(s.get("rpo_seconds"))

    def _check_lag(self, rpo: float | None) -> None:
        lagging = rpo is not None and rpo > self.conf.max_lag
        if lagging and not self.alerting:
            log.error(
                "binlog archive is %.0f s behind (XIEHE_BINLOG_MAX_LAG_SECONDS=%d)",
                rpo,
                self.conf.max_lag,
            )
            _alert({"event": "binlog.lagging", "status": "failed", "rpo_seconds": rpo})
        elif self.alerting and not lagging:
            log.info("binlog archive caught up (RPO %.1f s)", rpo or 0)
            _alert({"event": "binlog.caught_up", "status": "succeeded", "rpo_seconds": rpo})
        self.alerting = lagging

    def _stalled(self, since: float, now: float) -> bool:
        """The server is ahead and the archive has not moved for STALL_SECONDS."""
        s = self.state
        server = s.get("server") or {}
        behind = (server.get("file"), server.get("position")) != (s.get("file"), s.get("position"))
        return behind and now - since > STALL_SECONDS

    # - the loop

    def run(self, lock_wait: float = 30.0) -> None:
        problems = binlog_problems(self.settings.mysql)
        if problems:
            raise TargetError("binlog", "; ".join(problems) + ". " + HINT)
        lock_fd = self._lock(lock_wait)
        failures = 0
        try:
            with defaults_file(self.settings.mysql) as cnf:
                while not self.stop.is_set():
                    started = time.monotonic()
                    self._supervise(lock_fd, cnf)
                    failures = 0 if time.monotonic() - started > 60 else failures + 1
                    pause = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF)) - 1]
                    if not self.stop.is_set():
                        log.warning("restarting the binlog stream in %d s", pause)
                        self.stop.wait(pause)
        finally:
            self._stop_child()
            os.close(lock_fd)

    def _supervise(self, lock_fd: int, cnf: Path) -> None:
        """One child's life: start it, publish the state each second until it ends."""
        try:
            self._start_child(lock_fd, cnf)
        except TargetError as exc:  # the server is down: publish the growing RPO, retry
            log.error("%s", exc)
            self._tick()
            return
        moved_at, last = time.monotonic(), None
        while not self.stop.is_set():
            self._tick()
            here = (self.state.get("file"), self.state.get("position"))
            if here != last:
                moved_at, last = time.monotonic(), here
            if self.child.poll() is not None:
                log.error("mariadb-binlog exited with status %d", self.child.returncode)
                return
            if self._stalled(moved_at, time.monotonic()):
                log.error("the binlog stream stalled; restarting it")
                self._stop_child()
                return
            self.stop.wait(POLL_SECONDS)
        self._stop_child()

    def _tick(self) -> None:
        self._scan()
        self._publish(time.time())


# -- replay ------------------------------------------------------------------------------


def _may_skip_binlog(settings: MySQLSettings) -> bool:
    """Whether the restore user may replay without writing to the binlog (BINLOG ADMIN)."""
    conn = connect(settings)
    try:
        conn.query("SET SESSION sql_log_bin = 0")
        return True
    except pymysql.MySQLError:
        return False
    finally:
        conn.close()


def replay(
    settings: MySQLSettings,
    files: list[Path],
    start: int,
    stop: int | None,
    database: str | None,
    progress: Callable[[int], None],
) -> int:
    """Apply the archived events of `files` from `start` (in the first) to `stop` (in the
    last; None: its end) to the server, only those of `database` (None: all).  Returns the
    bytes of SQL applied.  The events are streamed: mariadb-binlog | (count) | mariadb."""
    decode = [_tool("mariadb-binlog", "mysqlbinlog"), f"--start-position={start}"]
    if stop is not None:
        decode.append(f"--stop-position={stop}")
    if database:
        decode.append(f"--database={database}")
    if _may_skip_binlog(settings):
        decode.append("--disable-log-bin")
    decode += [str(p) for p in files]
    with defaults_file(settings) as cnf:
        client = [_tool("mariadb", "mysql"), f"--defaults-extra-file={cnf}", "--binary-mode"]
        env = {**os.environ, "TZ": "UTC"}
        with tempfile.TemporaryFile() as errors:
            reader = subprocess.Popen(decode, stdout=subprocess.PIPE, stderr=errors, env=env)
            writer = subprocess.Popen(client, stdin=subprocess.PIPE, stderr=errors, env=env)
            moved = _pump(reader, writer, progress)
            if reader.returncode or writer.returncode:
                errors.seek(0)
                text = errors.read()[-2000:].decode(errors="replace").strip()
                raise TargetError("binlog", f"replay failed: {text or 'no message'}")
    return moved


def _pump(reader: subprocess.Popen, writer: subprocess.Popen, progress) -> int:
    moved = 0
    try:
        while chunk := reader.stdout.read(CHUNK):
            writer.stdin.write(chunk)
            moved += len(chunk)
            progress(len(chunk))
    except BrokenPipeError:
        reader.kill()  # the client stopped on an error: its message says why
    finally:
        with contextlib.suppress(BrokenPipeError):
            writer.stdin.close()
        reader.wait()
        writer.wait()
    return moved
