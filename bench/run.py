"""Benchmark xiehe-backup against the standard tools, side by side on the same data.

    python3 -m bench.run --size ref [--workdir /var/tmp/xiehe-bench] [--keep]
        [--only mysql,redis,uploads,e2e]

Generates the data set once (MySQL database bench_<size>, a private redis-server, Docker
volume bench_<size>_uploads), then times each peer and our own code on it, polling the
memory of each process tree (PSS of the tree, RSS of its largest process) for its peak.
Prints one table, the ratios the targets of issue 7 name with PASS/FAIL, and writes
everything to bench/results/<timestamp>.json.

Our code runs in a child Python process per measurement (bench/ours.py), so its peak is
that process alone; the end-to-end rows run through a real Celery worker, whose whole
process tree is what "worker peak" measures.  Like the peers, ours reads the volume at its
mountpoint (XIEHE_VOLUME_READ=auto, run as root on the engine's host); work done inside
dockerd (BGSAVE's container, helper containers) is not counted in anyone's memory.
The page cache is warm for every contender alike (data just written).  The first uploads
backups are also restored (group "uploads restore", a report with no target).
Credentials never reach argv: MySQL tools get a 0600 --defaults-file, restic its password in
RESTIC_PASSWORD, our code the XIEHE_MYSQL_PASSWORD the caller exported.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from bench import generate as gen
from bench.ours import UNAVAILABLE

RESULTS = Path(__file__).resolve().parent / "results"
POLL = 0.1  # seconds between two memory samples (each reads the smaps of the tree)
PAGE = os.sysconf("SC_PAGE_SIZE")
MEMORY_LIMIT_MB = 300
# Runs per row for the rows the end-to-end and restore targets are drawn from: their median.
# On a shared two-core machine one busy moment moved a single run by 20-30%.
REPEAT = 3


# --------------------------------------------------------------------------- measuring


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size: pages shared with the parent (a forked pool child's code
    and imports) count once across the tree, not once per process as in RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return _rss(pid)


def tree_rss(roots: list[int]) -> tuple[int, int]:
    """(proportional bytes of the roots and all their descendants, resident bytes of the
    largest single one), now."""
    tree, total, largest, todo = _children(), 0, 0, list(roots)
    while todo:
        pid = todo.pop()
        total, largest = total + _pss(pid), max(largest, _rss(pid))
        todo += tree.get(pid, [])
    return total, largest


class PeakPoller:
    """Samples tree_rss(roots) in a thread; .peak is the largest sample seen."""

    def __init__(self, roots: list[int]) -> None:
        self.roots, self.peak, self.peak_proc = roots, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Niced: the samples (smaps of every process in the tree) would otherwise take a
        # core's tenth from the run they measure, on a machine of two cores.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.is_set():
            total, largest = tree_rss(self.roots)
            self.peak, self.peak_proc = max(self.peak, total), max(self.peak_proc, largest)
            self._stop.wait(POLL)

    def stop(self) -> tuple[int, int]:
        """(peak of the tree's total PSS, peak RSS of its largest process), in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak, self.peak_proc


@dataclass
class Row:
    group: str
    name: str
    seconds: float | None = None
    peak_mb: float | None = None
    warm_seconds: float | None = None  # ours: the call alone, in an already started process
    note: str = ""
    role: str = "peer"  # "peer" or "ours"
    extra: dict = field(default_factory=dict)


Command = str | list[str] | Callable[[int], str | list[str]]


@dataclass
class Contender:
    """One thing measured: a bash pipeline or an argv (or a callable of the run's index
    giving one), with what runs untimed before and after each run."""

    name: str
    cmd: Command
    role: str = "peer"  # "peer" or "ours"
    watch: list[int] | None = None
    env: dict[str, str] | None = None
    before: Callable[[int], None] = lambda i: None
    after: Callable[[Row], None] = lambda row: None


class Bench:
    """Runs the measurements and keeps their rows."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env, self.rows = workdir, env, []
        self.log = workdir / "bench.log"

    def run(
        self,
        group: str,
        name: str,
        cmd: Command,
        role: str = "peer",
        watch: list[int] | None = None,
        env: dict[str, str] | None = None,
        repeat: int = 1,
        before: Callable[[int], None] = lambda i: None,
        mean: bool = False,
        after: Callable[[Row], None] = lambda row: None,
    ) -> Row:
        """Time cmd (a bash pipeline or an argv); peak RSS of its tree, or of `watch`'s.
        With repeat > 1 (rows that vary run to run), the row of the median run (by warm time
        where there is one) is kept, or with `mean` its times are the runs' means; every
        run's time goes in extra["runs_s"].  before(i) runs, untimed, before run i, and
        after(row) after it (it may void the run: seconds None); a callable cmd is called
        with i."""
        contender = Contender(name, cmd, role, watch, env, before, after)
        return self.alternate(group, [contender], repeat, mean)[0]

    def alternate(
        self, group: str, contenders: list[Contender], repeat: int, mean: bool = False
    ) -> list[Row]:
        """As run(), for several contenders whose runs take turns, in the order A B, B A,
        A B...: what drifts while they are measured, the machine or a server's timer, falls
        on all of them alike, and going first or second in a turn too.  Each run starts
        after an untimed sync: no run pays for the writeback of the one before it (the
        files restic or tar just wrote).  Their rows, in order."""
        runs: list[list[Row]] = [[] for _ in contenders]
        for i in range(repeat):
            turn = list(zip(contenders, runs, strict=True))
            for c, done in reversed(turn) if i % 2 else turn:
                os.sync()  # what the last run left dirty is not written back during this one
                c.before(i)
                argv = c.cmd(i) if callable(c.cmd) else c.cmd
                done.append(self._run_once(group, c.name, argv, c.role, c.watch, c.env))
                if done[-1].seconds is not None:
                    c.after(done[-1])
        rows = [self._summary(done, mean) for done in runs]
        self.rows.extend(rows)
        return rows

    def _summary(self, runs: list[Row], mean: bool) -> Row:
        """One row for a contender's runs (see run())."""
        row = self._keep(runs)
        if len(runs) > 1 and row.seconds is not None:  # memory: the highest peak of any run
            row.peak_mb = max(r.peak_mb for r in runs)
            row.extra["peak_proc_mb"] = max(r.extra["peak_proc_mb"] for r in runs)
            row.extra["runs_s"] = [r.warm_seconds or r.seconds for r in runs]
            if mean:
                row.seconds = statistics.fmean(r.seconds for r in runs)
                if row.warm_seconds is not None:
                    row.warm_seconds = statistics.fmean(r.warm_seconds for r in runs)
            row.note = f"{row.note} {'mean' if mean else 'median'} of {len(runs)}".strip()
        return row

    @staticmethod
    def _keep(runs: list[Row]) -> Row:
        """The row a measurement keeps: a failed run if any (no figure), else the median."""
        failed = [r for r in runs if r.seconds is None]
        if failed:
            return failed[0]
        done = sorted(runs, key=lambda r: r.seconds if r.warm_seconds is None else r.warm_seconds)
        return done[len(done) // 2]

    def _run_once(
        self,
        group: str,
        name: str,
        cmd: str | list[str],
        role: str,
        watch: list[int] | None,
        env: dict[str, str] | None,
    ) -> Row:
        argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
        out = self.workdir / "last.out"
        row = Row(group, name, role=role)
        print(f"-- {group}: {name}", flush=True)
        with open(out, "wb") as stdout, open(self.log, "ab") as stderr:
            stderr.write(f"\n== {group}: {name}\n".encode())
            stderr.flush()
            start = time.monotonic()
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env or self.env)
            poller = PeakPoller(watch or [proc.pid])
            rc = proc.wait()
            row.seconds = time.monotonic() - start
            peak, peak_proc = poller.stop()
            row.peak_mb, row.extra["peak_proc_mb"] = peak / 2**20, peak_proc / 2**20
        row.extra["stdout"] = out.read_text(errors="replace").strip()[-2000:]
        if rc == UNAVAILABLE and role == "ours":
            row.seconds = row.peak_mb = None
            row.note = "not available: " + row.extra["stdout"][-200:]
        elif rc:
            row.seconds = row.peak_mb = None
            row.note = f"failed (exit {rc}), see {self.log}"
        elif role == "ours" and isinstance(cmd, list) and "bench.ours" in cmd:
            result = json.loads(row.extra["stdout"].splitlines()[-1])
            row.warm_seconds = result["warm_s"]
            row.seconds -= result["waited_s"]
        return row

    def timed(self, group: str, name: str, fn, note: str = "", repeat: int = 1) -> Row:
        """Time an in-process call (no memory figure: the work happens in a server); with
        repeat > 1, the median run."""
        runs = []
        for _ in range(repeat):
            print(f"-- {group}: {name}", flush=True)
            start = time.monotonic()
            fn()
            runs.append(Row(group, name, seconds=time.monotonic() - start, note=note))
        row = self._keep(runs)
        if repeat > 1:
            row.extra["runs_s"] = [r.seconds for r in runs]
            row.note = f"{note}; median of {repeat}".lstrip("; ")
        self.rows.append(row)
        return row

    def get(self, group: str, name: str) -> Row | None:
        return next((r for r in self.rows if r.group == group and r.name == name), None)


# --------------------------------------------------------------------------- our side


def ours_cmd(case: str, **params) -> list[str]:
    """The argv of one measurement of our code: a child running bench/ours.py."""
    return [sys.executable, "-m", "bench.ours", case, json.dumps(params)]


# --------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    size: str
    workdir: Path
    db: str
    volume: str
    image: str
    mysql: gen.MySQLTarget
    redis: object = None  # tests.support-like RedisServer of our own
    broker: object = None
    mountpoint: str = ""


def defaults_file(workdir: Path, target: gen.MySQLTarget) -> Path:
    """A 0600 option file read by mariadb, mariadb-dump, mydumper and myloader."""
    path = workdir / "my.cnf"
    body = f"host={target.host}\nport={target.port}\nuser={target.user}\n" + (
        f"password={target.password}\n" if target.password else ""
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"[{g}]\n{body}" for g in ("client", "mydumper", "myloader")))
    return path


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return path


def drop_db(target: gen.MySQLTarget, db: str) -> None:
    conn = target.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    finally:
        conn.close()


def restored_counts(target: gen.MySQLTarget, db: str) -> dict[str, int]:
    conn = target.connect(db)
    try:
        with conn.cursor() as cur:
            out = {}
            for table in ("patients", "studies", "reports", "audit_log"):
                cur.execute(f"SELECT COUNT(*) FROM `{table}`")
                out[table] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


# --------------------------------------------------------------------------- the groups


def bench_mysql(b: Bench, s: Setup, cnf: Path) -> Path | None:
    """Backups of the database; returns our dump's artifact, for the restore group."""
    g, out = "mysql backup", fresh(s.workdir / "mysql")
    extra = f"--defaults-file={cnf}"
    b.run(
        g,
        "mariadb-dump --single-transaction | gzip",
        f"mariadb-dump {extra} --single-transaction --routines --triggers --events "
        f"{s.db} | gzip > {out}/dump.sql.gz",
        repeat=REPEAT,
    )
    b.run(
        g,
        "mydumper -t 2 -c",
        f"mydumper {extra} -t 2 -c -B {s.db} -o {out}/mydumper",
        repeat=REPEAT,
        before=lambda i: shutil.rmtree(out / "mydumper", ignore_errors=True),
    )
    row = b.run(
        g,
        "ours: mysql.dump (parallel 2, zstd)",
        ours_cmd(
            "mysql-dump",
            host=s.mysql.host,
            port=s.mysql.port,
            user=s.mysql.user,
            db=s.db,
            parallel=2,
            out=str(out / "ours"),
            id="bench",
        ),
        role="ours",
        before=lambda i: fresh(out / "ours"),
        repeat=REPEAT,
    )
    if row.seconds is None:
        return None
    arts = json.loads(row.extra["stdout"].splitlines()[-1])["artifacts"]
    return out / "ours" / next(a["file"] for a in arts if a.get("source") == s.db)


def bench_restore(b: Bench, s: Setup, cnf: Path, ours_dump: Path | None) -> None:
    g, out, into = "mysql restore", s.workdir / "mysql", f"{s.db}_restore"
    extra = f"--defaults-file={cnf}"
    expected = restored_counts(s.mysql, s.db)
    steps = [
        (
            "mariadb < dump (gunzip)",
            f"mariadb {extra} -e 'CREATE DATABASE `{into}`' && "
            f"gunzip -c {out}/dump.sql.gz | mariadb {extra} {into}",
            "peer",
            1,  # in no target: not repeated
        ),
        (
            "myloader -t 2",
            f"myloader {extra} -t 2 -o -d {out}/mydumper -s {s.db} -B {into}",
            "peer",
            REPEAT,
        ),
    ]

    def empty(i: int) -> None:
        drop_db(s.mysql, into)

    def check(row: Row) -> None:
        _check_restore(row, s, into, expected)

    for name, cmd, role, repeat in steps:
        b.run(g, name, cmd, role, repeat=repeat, before=empty, after=check)
    drop_db(s.mysql, into)
    if ours_dump is None:
        b.rows.append(
            Row(g, "ours: mysql.restore", note="not available: no dump of ours", role="ours")
        )
        return
    b.run(
        g,
        "ours: mysql.restore",
        ours_cmd(
            "mysql-restore",
            host=s.mysql.host,
            port=s.mysql.port,
            user=s.mysql.user,
            db=s.db,
            parallel=2,
            artifact=str(ours_dump),
            into=into,
        ),
        role="ours",
        repeat=REPEAT,
        before=empty,
        after=check,
    )
    drop_db(s.mysql, into)


def _check_restore(row: Row, s: Setup, into: str, expected: dict[str, int]) -> None:
    """A restore that lost rows is no result: mark it, so no ratio is drawn from it."""
    if row.seconds is None:
        return
    got = restored_counts(s.mysql, into)
    if got != expected:
        row.note = f"WRONG rows {got} != {expected}"
        row.seconds = None


# The save rules of the product's Redis (docker-compose.yml sets none: Redis 7's defaults).
PRODUCT_SAVE = "3600 1 300 100 60 10000"
PHASES = 8


def bench_redis(b: Bench, s: Setup) -> None:
    """Live mode twice: on a master with the product's save rules (ours asks for the RDB
    from its disk), then on one without (ours gets it diskless, as redis-cli does)."""
    import redis

    out = fresh(s.workdir / "redis")
    client = redis.Redis(port=s.redis.port)
    client.config_set("save", PRODUCT_SAVE)
    client.bgsave()  # the generator's writes are saved now, not by a rule mid-measurement
    wait_saved(client)
    # Diskless, the master forks once whole seconds show the replica waited 5 s: a run's
    # wait depends on the fraction of the second it connects at, and a run started right
    # after the last is locked to its phase.  So each contender makes PHASES runs whose
    # timed part starts at fractions spread evenly over the second (redis-cli's process,
    # our call after its imports), and its row is their mean.  The grid is shifted by a
    # random fraction of a step: on a fixed grid, where the wait's jump falls between
    # the points (it moves with how long a contender takes to connect) biased the mean by
    # up to half a step, for or against either contender.  The two take turns phase by
    # phase, each going first in every other turn: the master's timer drifts later
    # against the wall clock (about 4 ms a second here), so at the same phase the run
    # made second waited 20-30 ms longer, and one contender's eight runs 0.17 s longer on
    # average than the same eight just before.
    shift = random.random() / PHASES
    for g, save, repeat in (("redis", PRODUCT_SAVE, 1), ("redis, no save", "", PHASES)):
        client.config_set("save", save)

        def saved(i: int) -> None:
            wait_saved(client)  # the last run's replication fork may still be writing

        def at_phase(i: int, repeat: int = repeat) -> None:
            saved(i)
            if repeat > 1:
                time.sleep((i / repeat + shift - time.time()) % 1.0)

        def ours(i: int, repeat: int = repeat) -> list[str]:
            phase = i / repeat + shift if repeat > 1 else None
            dest = str(fresh(out / "ours"))
            return ours_cmd("redis-snapshot", url=s.redis.url, out=dest, id="b", start_phase=phase)

        cli_cmd = f"redis-cli -p {s.redis.port} --rdb {out}/cli.rdb"
        cli = Contender("redis-cli --rdb", cli_cmd, before=at_phase)
        mine = Contender("ours: redis.snapshot (live, zstd)", ours, role="ours", before=saved)
        if save:
            b.alternate(g, [cli], repeat)
            wait_saved(client)

            def bgsave() -> None:
                client.bgsave()  # the fork is in progress once this returns
                wait_saved(client)

            b.timed(
                g,
                "BGSAVE (server-side, until written)",
                bgsave,
                "memory is the server's fork",
                repeat=REPEAT,
            )
            row = b.alternate(g, [mine], repeat)[0]
        else:
            row = b.alternate(g, [cli, mine], repeat, mean=True)[1]
        note_read(row)


def note_read(row: Row) -> None:
    """How our snapshot read the RDB, in the row's note."""
    if row.seconds is not None:
        read = json.loads(row.extra["stdout"].splitlines()[-1])["read"]
        row.note = f"read: {read}; {row.note}".strip("; ")


def wait_saved(client) -> None:
    """Until no RDB save (BGSAVE or a replication fork) is running."""
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.01)


def bench_redis_container(b: Bench, s: Setup, image: str) -> None:
    """Container mode: BGSAVE plus copying the RDB out of the container, against ours."""
    import docker
    import redis

    from tests.support.servers import free_port

    g, out, port = "redis container", fresh(s.workdir / "redis-container"), free_port()
    name = f"bench_redis_{os.getpid()}"
    engine = docker.from_env(timeout=600)
    container = engine.containers.run(
        image,
        [
            "/usr/bin/redis-server",
            "--dir",
            "/data",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        name=name,
        detach=True,
        ports={"6379/tcp": ("127.0.0.1", port)},
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while not _pings(client):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis container {name} did not answer")
            time.sleep(0.1)
        gen.generate_redis(url, gen.SIZES[s.size])
        b.run(
            g,
            "BGSAVE + docker cp",
            (
                f"redis-cli -p {port} bgsave >/dev/null && until redis-cli -p {port} info "
                f"persistence | grep -q 'rdb_bgsave_in_progress:0'; do sleep 0.01; done && "
                f"docker cp {name}:/data/dump.rdb {out}/peer.rdb"
            ),
            repeat=REPEAT,
        )
        wait_saved(client)
        row = b.run(
            g,
            "ours: redis.snapshot (container, zstd)",
            ours_cmd("redis-snapshot", url=url, container=name, out=str(out / "ours"), id="bench"),
            role="ours",
            repeat=REPEAT,
        )
        note_read(row)
    finally:
        container.remove(force=True, v=True)


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.RedisError:
        return False


RESIDENT = "ours: backup --only volumes (worker, resident producer)"


def bench_uploads(b: Bench, s: Setup, run_label: str, worker: Worker | None) -> None:
    """One pass over the uploads volume: 'first' runs everything, 'second' the incrementals,
    'third' (after another 1%) restic and a backup enqueued by a resident producer."""
    g, out, mp = f"uploads {run_label}", s.workdir / "uploads", s.mountpoint
    out.mkdir(exist_ok=True, mode=0o700)
    restic = restic_env(b, out)
    if run_label == "first":
        shutil.rmtree(out / "restic", ignore_errors=True)
        subprocess.run(["restic", "init", "-q"], env=restic, check=True, stdout=subprocess.DEVNULL)
        b.run(g, "tar czf", f"tar -C {mp} -czf {out}/up.tar.gz .", repeat=REPEAT)
        tar_zstd = f"tar -C {mp} -cf - . | zstd -q -T2 -o {out}/up.tar.zst -f"
        b.run(g, "tar | zstd -T2", tar_zstd, repeat=REPEAT)
    b.run(g, "restic backup", f"restic backup -q {mp}", env=restic)
    if run_label == "third":  # restic's run, and a backup from a producer already up
        worker.backup_resident(b, g, RESIDENT, "volumes")
        return
    first = b.get("uploads first", "ours: volumes.archive (zstd)")
    previous = None  # the second run copies the unchanged files' frames from the first's artifact
    if run_label != "first" and first and first.seconds is not None:
        artifact = json.loads(first.extra["stdout"].splitlines()[-1])["artifacts"][0]["file"]
        previous = str(out / "ours-first" / artifact)
    b.run(
        g,
        "ours: volumes.archive (zstd)",
        ours_cmd(
            "volume-archive",
            volume=s.volume,
            image=s.image,
            out=str(fresh(out / f"ours-{run_label}")),
            id=f"bench{run_label}",
            previous=previous,
        ),
        role="ours",
    )
    if worker:
        worker.backup(b, g, "ours: backup --only volumes (worker)", "volumes")
    if run_label == "first":
        bench_uploads_restore(b, s)


def restic_env(b: Bench, out: Path) -> dict[str, str]:
    return {
        **b.env,
        "RESTIC_PASSWORD": "bench-only-password",
        "RESTIC_REPOSITORY": str(out / "restic"),
        "RESTIC_CACHE_DIR": str(out / "restic-cache"),
    }


def tree_totals(root: Path) -> tuple[int, int]:
    """(regular files, their bytes) below root."""
    files = size = 0
    for top, _, names in os.walk(root):
        for name in names:
            info = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(info.st_mode):
                files, size = files + 1, size + info.st_size
    return files, size


def bench_uploads_restore(b: Bench, s: Setup) -> None:
    """The first backups restored into an empty place: the peers' into a directory, ours
    into a volume made anew (the artifact checked whole before anything is touched, the
    volume emptied by a helper, then filled through the engine).  A restore that does not
    give back every file and byte of the source is no result.  No target: a report.
    Each run starts with nothing left dirty on disk (sync, untimed), and so does what
    follows: a restore writes 210 MB, whose writeback would otherwise fall on the next."""
    import docker

    g, out = "uploads restore", s.workdir / "uploads"
    dest, volume, engine = out / "restored", f"{s.volume}_restored", docker.from_env()
    expected = tree_totals(Path(s.mountpoint))

    def checked(root: Callable[[], Path]) -> Callable[[Row], None]:
        def after(row: Row) -> None:
            got = tree_totals(root())
            if got != expected:
                row.note, row.seconds = f"WRONG (files, bytes) {got} != {expected}", None

        return after

    def no_volume(i: int = 0) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(volume).remove(force=True)
        os.sync()

    def no_dir(i: int) -> None:
        fresh(dest)
        os.sync()

    in_dir = {"before": no_dir, "after": checked(lambda: dest), "repeat": REPEAT}
    b.run(g, "tar xzf", f"tar -C {dest} -xzf {out}/up.tar.gz", **in_dir)
    b.run(g, "zstd -dc | tar x", f"zstd -dcq {out}/up.tar.zst | tar -C {dest} -xf -", **in_dir)
    restic = restic_env(b, out)
    b.run(g, "restic restore", f"restic restore latest -q --target {dest}", env=restic, **in_dir)
    first = b.get("uploads first", "ours: volumes.archive (zstd)")
    if first and first.seconds is not None:
        artifact = json.loads(first.extra["stdout"].splitlines()[-1])["artifacts"][0]["file"]

        def mountpoint() -> Path:
            return Path(engine.volumes.get(volume).attrs["Mountpoint"])

        cmd = ours_cmd(
            "volume-restore",
            volume=volume,
            image=s.image,
            artifact=str(out / "ours-first" / artifact),
        )
        b.run(
            g,
            "ours: volumes.restore",
            cmd,
            "ours",
            repeat=REPEAT,
            before=no_volume,
            after=checked(mountpoint),
        )
    shutil.rmtree(dest, ignore_errors=True)
    no_volume()


# --------------------------------------------------------------------------- end to end


class Worker:
    """A real Celery worker configured for the bench data; backups go through the CLI."""

    def __init__(self, s: Setup, env: dict[str, str]) -> None:
        self.backup_dir = fresh(s.workdir / "backups")
        self.env = {k: v for k, v in env.items() if not k.startswith("XIEHE_")}
        self.env.update(
            XIEHE_BROKER_URL=s.broker.url,
            XIEHE_BACKUP_DIR=str(self.backup_dir),
            XIEHE_MYSQL_HOST=s.mysql.host,
            XIEHE_MYSQL_PORT=str(s.mysql.port),
            XIEHE_MYSQL_USER=s.mysql.user,
            XIEHE_MYSQL_DATABASES=s.db,
            XIEHE_MYSQL_PARALLEL="2",
            XIEHE_REDIS_URL=s.redis.url,
            XIEHE_VOLUMES=s.volume,
            XIEHE_HELPER_IMAGE=s.image,
            XIEHE_DISK_RESERVE_MB="64",
            PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        )
        if s.mysql.password:
            self.env["XIEHE_MYSQL_PASSWORD"] = s.mysql.password
        self.logfile = s.workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers",
                    "worker",
                    "-l",
                    "info",
                    "-c",
                    "2",
                    "-n",
                    f"bench{os.getpid()}@%h",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while b"ready." not in self.logfile.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: see {self.logfile}")
            time.sleep(0.2)
        return self

    def backup(self, b: Bench, group: str, name: str, only: str = "", repeat: int = 1) -> Row:
        """A backup through the queue; peak memory is the worker's whole process tree."""
        argv = [sys.executable, "-m", "producers.cli.main", "backup", "--reason", "bench"]
        row = b.run(
            group,
            name,
            argv + (["--only", only] if only else []),
            role="ours",
            watch=[self.proc.pid],
            env=self.env,
            repeat=repeat,
        )
        row.extra["worker_idle_mb"] = tree_rss([self.proc.pid])[0] / 2**20
        if row.seconds is not None:
            row.extra["steps_s"] = self.steps(row.extra["stdout"].split()[-1])
        return row

    def steps(self, backup_id: str) -> dict[str, float]:
        """Each step's duration, from the run's journal."""
        journal = json.loads((self.backup_dir / ".runs" / f"{backup_id}.json").read_text())
        return {k: round(v.get("duration_s") or 0, 2) for k, v in journal["steps"].items()}

    def backup_resident(self, b: Bench, group: str, name: str, only: str) -> Row:
        """A backup enqueued by a process already up (bench/ours.py, backup-queued): its
        warm time leaves out the interpreter's start, which a CLI command pays."""
        row = b.run(
            group,
            name,
            ours_cmd("backup-queued", only=only),
            role="ours",
            watch=[self.proc.pid],
            env=self.env,
        )
        row.extra["worker_idle_mb"] = tree_rss([self.proc.pid])[0] / 2**20
        if row.seconds is not None:
            row.extra["steps_s"] = self.steps(
                json.loads(row.extra["stdout"].splitlines()[-1])["id"]
            )
        return row

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def end_to_end(b: Bench, s: Setup, worker: Worker) -> Row:
    """The whole backup through the queue, Redis in live mode.  Its Redis peer is BGSAVE,
    which has no repl-diskless-sync-delay (the wait of a diskless replication fetch for more
    replicas, 5 s by default): the delay is 0 for this run too, so both pay one fork and
    one serialisation of the dataset, and nothing else."""
    import redis

    client = redis.Redis(port=s.redis.port)
    name = "repl-diskless-sync-delay"
    delay = client.config_get(name)[name]
    client.config_set(name, 0)
    try:
        row = worker.backup(b, "end to end", "ours: full backup (worker, verified)", repeat=REPEAT)
    finally:
        client.config_set(name, delay)
    row.extra["redis"] = f"live mode, {name} 0 (BGSAVE has no such wait)"
    return row


# --------------------------------------------------------------------------- report


@dataclass
class Target:
    label: str
    ours: list[tuple[str, str]]
    peers: list[tuple[str, str]]
    limit: float
    # Ours timed as in a running worker (start-up and imports excluded): for a step that
    # runs inside the worker; a whole run through the queue is always timed from outside.
    warm: bool = False


TARGETS = (
    Target(
        "end to end <= 1.0x sum of fastest peers (mydumper -t 2 + BGSAVE + tar|zstd -T2)",
        [("end to end", "ours: full backup (worker, verified)")],
        [
            ("mysql backup", "mydumper -t 2 -c"),
            ("redis", "BGSAVE (server-side, until written)"),
            ("uploads first", "tar | zstd -T2"),
        ],
        1.0,
    ),
    Target(
        "end to end <= 0.35x the seed plan (mariadb-dump|gzip + BGSAVE + tar czf)",
        [("end to end", "ours: full backup (worker, verified)")],
        [
            ("mysql backup", "mariadb-dump --single-transaction | gzip"),
            ("redis", "BGSAVE (server-side, until written)"),
            ("uploads first", "tar czf"),
        ],
        0.35,
    ),
    Target(
        "MySQL restore <= 1.0x myloader -t 2",
        [("mysql restore", "ours: mysql.restore")],
        [("mysql restore", "myloader -t 2")],
        1.0,
        warm=True,
    ),
    Target(
        "uploads after 1% new <= 1.0x restic's second run",
        [("uploads second", "ours: backup --only volumes (worker)")],
        [("uploads second", "restic backup")],
        1.0,
    ),
    Target(
        "uploads after 1% new <= 0.10x our own first run",
        [("uploads second", "ours: backup --only volumes (worker)")],
        [("uploads first", "ours: backup --only volumes (worker)")],
        0.10,
    ),
    # The same two targets for the archive step alone: the work done on the volume's data,
    # without the CLI's start-up and the queue (a fixed cost, as large as the step here).
    Target(
        "uploads after 1% new, archive step <= 1.0x restic's second run",
        [("uploads second", "ours: volumes.archive (zstd)")],
        [("uploads second", "restic backup")],
        1.0,
        warm=True,
    ),
    Target(
        "uploads after 1% new, archive step <= 0.10x our own first archive",
        [("uploads second", "ours: volumes.archive (zstd)")],
        [("uploads first", "ours: volumes.archive (zstd)")],
        0.10,
        warm=True,
    ),
    # The same backup through the queue, enqueued by a process already up (the migration
    # gate's and the beat schedule's way): the queue and the worker, without the CLI's start.
    Target(
        "uploads after 1% new, from a resident producer <= 1.0x restic's run",
        [("uploads third", RESIDENT)],
        [("uploads third", "restic backup")],
        1.0,
        warm=True,
    ),
    Target(
        "Redis snapshot (container) <= 1.0x BGSAVE + copy of the file",
        [("redis container", "ours: redis.snapshot (container, zstd)")],
        [("redis container", "BGSAVE + docker cp")],
        1.0,
        warm=True,
    ),
    Target(
        "Redis snapshot (live, master with save rules) <= 1.0x redis-cli --rdb",
        [("redis", "ours: redis.snapshot (live, zstd)")],
        [("redis", "redis-cli --rdb")],
        1.0,
        warm=True,
    ),
    Target(
        "Redis snapshot (live, master without save rules) <= 1.0x redis-cli --rdb",
        [("redis, no save", "ours: redis.snapshot (live, zstd)")],
        [("redis, no save", "redis-cli --rdb")],
        1.0,
        warm=True,
    ),
)


def _sum(b: Bench, keys: list[tuple[str, str]], warm: bool = False) -> float | None:
    rows = [b.get(*k) for k in keys]
    if any(r is None or r.seconds is None for r in rows):
        return None
    return sum(r.warm_seconds if warm and r.warm_seconds is not None else r.seconds for r in rows)


def verdicts(b: Bench) -> list[dict]:
    out = []
    for t in TARGETS:
        ours, peers = _sum(b, t.ours, t.warm), _sum(b, t.peers, t.warm)  # peers have no warm
        ratio = ours / peers if ours is not None and peers else None
        verdict = "n/a" if ratio is None else ("PASS" if ratio <= t.limit else "FAIL")
        out.append(
            {
                "target": t.label + " (ours in a running worker)" * t.warm,
                "ours_s": ours,
                "peers_s": peers,
                "ratio": ratio,
                "limit": t.limit,
                "verdict": verdict,
            }
        )
    worker_rows = [r for r in b.rows if "(worker" in r.name and r.peak_mb is not None]
    peak = max((r.peak_mb for r in worker_rows), default=None)
    largest = max((r.extra["peak_proc_mb"] for r in worker_rows), default=0)
    idle = max((r.extra["worker_idle_mb"] for r in worker_rows), default=0)
    out.append(
        {
            "target": f"worker peak memory < {MEMORY_LIMIT_MB} MB (whole process tree, PSS; "
            f"idle tree {idle:.0f} MB; largest single process {largest:.0f} MB RSS)",
            "ours_s": None,
            "peers_s": None,
            "ratio": peak,
            "limit": MEMORY_LIMIT_MB,
            "verdict": "n/a" if peak is None else ("PASS" if peak < MEMORY_LIMIT_MB else "FAIL"),
        }
    )
    return out


def _steps_wall(steps_s: dict[str, float]) -> float:
    """The steps' time in a run: the capture stage counts as its longest step."""
    from workers.workflows import CAPTURE_STEPS

    capture = [v for k, v in steps_s.items() if k in CAPTURE_STEPS]
    return sum(v for k, v in steps_s.items() if k not in CAPTURE_STEPS) + max(capture, default=0)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(b: Bench) -> str:
    lines = [
        f"{'group':<15} {'contender':<44} {'time s':>8} {'warm s':>7} {'peak MB':>8} "
        f"{'ours/this':>9}"
    ]
    for r in b.rows:
        ours = next(
            (
                o
                for o in b.rows
                if o.group == r.group and o.role == "ours" and o.seconds is not None
            ),
            None,
        )
        ratio = ours.seconds / r.seconds if ours and r.seconds and r is not ours else None
        lines.append(
            f"{r.group:<15} {r.name[:44]:<44} {_fmt(r.seconds, '8.2f')} "
            f"{_fmt(r.warm_seconds, '7.2f')} {_fmt(r.peak_mb, '8.0f')} {_fmt(ratio, '9.2f')}"
            + (f"  {r.note}" if r.note else "")
        )
    lines.append("ours/this: time of the group's first 'ours' row divided by this row's")
    lines.append(
        "warm s: our call alone, timed inside its process after the imports (as in a running "
        "worker); time s includes starting Python"
    )
    for r in b.rows:  # where a run through the queue spends its time
        if r.extra.get("steps_s"):
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in r.extra["steps_s"].items())
            outside = (r.warm_seconds or r.seconds) - _steps_wall(r.extra["steps_s"])
            lines.append(
                f"  {r.group} / {r.name}: {steps}; outside the steps {outside:.2f}s "
                "(the capture steps run side by side: only the longest counted)"
            )
    lines.append("")
    for v in verdicts(b):
        what = (
            f"{v['ratio']:.0f} MB"
            if "memory" in v["target"] and v["ratio"] is not None
            else f"{_fmt(v['ratio'], '.2f')}x ({_fmt(v['ours_s'], '.1f')}s / "
            f"{_fmt(v['peers_s'], '.1f')}s)"
        )
        lines.append(f"{v['verdict']:<5} {v['target']}: {what}")
    return "\n".join(lines)


def machine() -> dict:
    mem = next(
        line
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": mem.split(":", 1)[1].strip(),
        "software": software(),
    }


# The Python packages on our side of the race, and the peers' tools: a ratio moves with them
# (redis-py 8.2's import alone took 0.21 s of every CLI command here, 7.4's 0.13 s).
PACKAGES = ("celery", "kombu", "redis", "PyMySQL", "mysqlclient", "zstandard", "docker")
TOOLS = {
    "mariadb-dump": ["mariadb-dump", "--version"],
    "mydumper": ["mydumper", "--version"],
    "restic": ["restic", "version"],
    "zstd": ["zstd", "--version"],
    "redis-server": ["redis-server", "--version"],
}


def software() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    for name, argv in TOOLS.items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = "not found"
        found[name] = (out.strip().splitlines() or ["?"])[0]
    return found


def sizes(s: Setup) -> dict:
    conn = s.mysql.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables"
                " WHERE table_schema = %s",
                (s.db,),
            )
            mysql_bytes = int(cur.fetchone()[0] or 0)
    finally:
        conn.close()
    du = subprocess.run(["du", "-sb", s.mountpoint], capture_output=True, text=True)
    import redis

    used = redis.Redis(port=s.redis.port).info("memory")["used_memory"]
    return {
        "mysql_bytes": mysql_bytes,
        "redis_used_memory": used,
        "uploads_bytes": int(du.stdout.split()[0]) if du.returncode == 0 else None,
    }


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", choices=sorted(gen.SIZES), default="small")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/xiehe-bench"))
    p.add_argument("--helper-image", default="xiehe/helper:busybox")
    p.add_argument("--redis-image", default="xiehe/redis:local")
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--mysql-user", default="root")
    p.add_argument("--keep", action="store_true", help="keep the data set and work files")
    p.add_argument(
        "--only",
        type=_groups,
        default=GROUPS,
        help=f"comma list of {','.join(GROUPS)}: mysql backup and restore, redis (live and "
        "container), uploads (first and second runs), the end-to-end backup; default all",
    )
    return p.parse_args(argv)


GROUPS = ("mysql", "redis", "uploads", "e2e")


def _groups(value: str) -> tuple[str, ...]:
    asked = tuple(g.strip() for g in value.split(",") if g.strip())
    unknown = set(asked) - set(GROUPS)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"unknown group(s) {sorted(unknown)}; use {GROUPS}")
    return asked


def setup(args: argparse.Namespace) -> Setup:
    import docker

    from tests.support.servers import RedisServer

    workdir = fresh(args.workdir)
    s = Setup(
        args.size,
        workdir,
        f"bench_{args.size}",
        f"bench_{args.size}_uploads",
        args.helper_image,
        gen.MySQLTarget(
            args.mysql_host,
            args.mysql_port,
            args.mysql_user,
            os.environ.get("XIEHE_MYSQL_PASSWORD", ""),
        ),
    )
    s.redis = RedisServer(workdir / "redis-data")
    s.broker = RedisServer(workdir / "broker")
    print(f"generating the {args.size} data set ...", flush=True)
    e2e = "e2e" in args.only  # the end-to-end backup covers every store
    stores = [
        *(["--mysql-db", s.db] if e2e or "mysql" in args.only else []),
        *(["--redis-url", s.redis.url] if e2e or "redis" in args.only else []),
        *(["--volumes", s.volume] if e2e or "uploads" in args.only else []),
    ]
    gen.main(
        [
            *stores,
            "--size",
            args.size,
            "--mysql-host",
            s.mysql.host,
            "--mysql-port",
            str(s.mysql.port),
            "--mysql-user",
            s.mysql.user,
            "--helper-image",
            s.image,
        ]
    )
    if "--volumes" in stores:
        s.mountpoint = docker.from_env().volumes.get(s.volume).attrs["Mountpoint"]
    return s


def add_uploads(s: Setup, percent: int) -> None:
    gen.main(
        ["--volumes", s.volume, "--add-uploads-percent", str(percent)]
        + ["--helper-image", s.image, "--size", s.size]
    )


def teardown(s: Setup, keep: bool) -> None:
    for server in (s.redis, s.broker):
        if server:
            server.stop()
    if keep:
        return
    drop_db(s.mysql, s.db)
    import docker

    if s.mountpoint:
        docker.from_env().volumes.get(s.volume).remove(force=True)
    shutil.rmtree(s.workdir, ignore_errors=True)


def benchmark(args: argparse.Namespace) -> dict:
    s = setup(args)
    b = Bench(s.workdir, dict(os.environ))
    worker = None
    try:
        data = sizes(s)
        if "mysql" in args.only:
            cnf = defaults_file(s.workdir, s.mysql)
            bench_restore(b, s, cnf, bench_mysql(b, s, cnf))
        if "redis" in args.only:
            bench_redis(b, s)
            bench_redis_container(b, s, args.redis_image)
        if "uploads" in args.only or "e2e" in args.only:
            worker = Worker(s, b.env).start()
        if "uploads" in args.only:
            bench_uploads(b, s, "first", worker)
        if "e2e" in args.only:
            end_to_end(b, s, worker)
        if "uploads" in args.only:
            for run_label in ("second", "third"):
                add_uploads(s, percent=1)
                bench_uploads(b, s, run_label, worker)
    finally:
        if worker:
            worker.stop()
        teardown(s, args.keep)
    return {
        "size": args.size,
        "machine": machine(),
        "data": data,
        "rows": [asdict(r) for r in b.rows],
        "targets": verdicts(b),
        "table": table(b),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    report = benchmark(args)
    RESULTS.mkdir(exist_ok=True)
    only = "" if args.only == GROUPS else "-" + "-".join(args.only)
    path = RESULTS / f"{datetime.now():%Y%m%dT%H%M%S}-{args.size}{only}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    host = {k: v for k, v in report["machine"].items() if k != "software"}
    print(f"\nxiehe-backup benchmark, size {args.size}, {host}")
    print("software: " + "; ".join(f"{k} {v}" for k, v in report["machine"]["software"].items()))
    print(f"data: {report['data']}\n")
    print(report["table"])
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
