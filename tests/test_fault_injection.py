"""Fault injection with real processes: a worker killed, the broker restarted, MySQL stopped,
the backup disk full, an artifact corrupted, each in the middle of a real backup.

Every test checks what an operator relies on afterwards: no good backup lost, no partial
backup listed as good, no lock left in the broker, the next run succeeds, and the failure
reported with its cause in the run journal (.runs/ID.json) and on the CLI's stderr.

MySQL is a private MariaDB server (own datadir and port) that these tests may stop; the
broker is a private redis-server.  The big table (2**20 rows, ~300 MB of SQL) makes a dump
last ~10 s, long enough to strike in its middle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import base_env, unique
from tests.support.cli import cli, last_line
from tests.support.mariadb import MariaDB
from tests.support.stack import fill_mysql, fill_volume
from tests.support.webhook import Receiver
from workers.progress import RUN_KEY

BIG, SMALL = "xf_big", "xf_small"
TTL = 10  # XIEHE_LOCK_TTL: a dead worker's locks are gone after this


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    server = MariaDB(tmp_path_factory.mktemp("mariadb"))
    server.fill_big(BIG, 20)
    conn = server.connect(charset="utf8mb4")
    fill_mysql(conn, SMALL)
    conn.close()
    yield server
    server.stop()


@pytest.fixture
def env(mariadb, broker, tmp_path):
    """Back up the private MariaDB (both databases) through the private broker."""
    broker.client().flushall()
    out = base_env(broker.url, tmp_path / "backups")
    out.update(
        XIEHE_MYSQL_HOST="127.0.0.1",
        XIEHE_MYSQL_PORT=str(mariadb.port),
        XIEHE_MYSQL_USER="root",
        XIEHE_MYSQL_DATABASES=f"{BIG},{SMALL}",
        XIEHE_LOCK_TTL=str(TTL),
        XIEHE_LOCK_WAIT="0",
    )
    return out


def small(env: dict) -> dict:
    return {**env, "XIEHE_MYSQL_DATABASES": SMALL}


def start_backup(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "producers.cli.main", "backup", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_moving(client, step: str, min_bytes: int, timeout: float = 120) -> str:
    """The id of the run whose `step` has moved at least `min_bytes` (strike now)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in client.scan_iter(match=RUN_KEY + "*"):
            state = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
            if state.get("step") == step and int(float(state.get("bytes") or 0)) >= min_bytes:
                return key.decode()[len(RUN_KEY) :]
        time.sleep(0.05)
    raise AssertionError(f"no run reached {step} with {min_bytes} bytes")


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def good_backup(env: dict, worker_factory) -> str:
    """A good backup made by a worker of its own (workers read the settings, not the CLI)."""
    worker = worker_factory(env)
    proc = cli(env, "backup", "--reason", "the good one")
    worker.stop()
    assert proc.returncode == 0, proc.stderr
    return last_line(proc)


def journal(root: Path, run_id: str) -> dict:
    return json.loads((root / ".runs" / f"{run_id}.json").read_text())


def lock_keys(client) -> list[bytes]:
    return sorted(client.scan_iter(match="xiehe:lock:*"))


def assert_clean_after_failure(env, client, root, good: list[str], failed_id: str, cause: str):
    """The outcome checks shared by every fault: reported, nothing partial, locks free."""
    record = journal(root, failed_id)
    assert record["status"] in ("failed", "abandoned"), record["status"]
    assert cause in record["error"], record["error"]
    assert not list((root / ".staging").iterdir()), "staging left behind"
    assert not list(root.glob(f"*/*_{failed_id}.*")), "a partial artifact was published"
    assert sorted(p.name for p in root.glob("manifest_*.json")) == [
        f"manifest_{i}.json" for i in good
    ]
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [(b["id"], b["status"]) for b in listed] == [(i, "verified") for i in good]
    everything = json.loads(cli(env, "list", "--json", "--all").stdout)
    assert (failed_id, record["status"]) in [(b["id"], b["status"]) for b in everything]
    deadline = time.monotonic() + TTL + 5
    while lock_keys(client) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lock_keys(client) == []
    for backup_id in good:  # the good backups are intact, byte for byte
        proc = cli(env, "verify", backup_id)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def finish_with_mysql_stopped(proc: subprocess.Popen, mariadb: MariaDB) -> tuple[int, str]:
    """MariaDB shut down (SIGTERM) now; the backup's exit code and stderr; MariaDB back."""
    mariadb.stop(signal.SIGTERM)
    try:
        code, _, err = finish(proc)
    finally:
        mariadb.start()
    return code, err


def assert_one_alert(hook: Receiver, run_id: str) -> None:
    failures = [b for b in hook.bodies if b["type"] == "failure"]
    assert len(failures) == 1 and run_id in failures[0]["title"], hook.bodies


def assert_next_run_succeeds(env: dict, root: Path) -> str:
    proc = cli(env, "backup", "--reason", "after the fault")
    assert proc.returncode == 0, proc.stderr
    backup_id = last_line(proc)
    assert journal(root, backup_id)["status"] == "succeeded"
    assert (root / f"manifest_{backup_id}.json").exists()
    return backup_id


def stale_delivery_ignored(client, worker_log: Path, run_id: str, root: Path) -> None:
    """Requeue the dead worker's unacknowledged message as the transport does after the
    visibility timeout (hours later; kombu's restore_by_tag): the runner must ignore it."""
    before = journal(root, run_id)
    tags = client.hkeys("unacked")
    assert len(tags) == 1, "the killed step's message should await redelivery"
    message, _exchange, queue = json.loads(client.hget("unacked", tags[0]))
    message["headers"]["redelivered"] = True
    client.zrem("unacked_index", tags[0])
    client.hdel("unacked", tags[0])
    client.rpush(queue, json.dumps(message))
    deadline = time.monotonic() + 60
    while b"delivered again and ignored" not in worker_log.read_bytes():
        assert time.monotonic() < deadline, worker_log.read_text()[-3000:]
        time.sleep(0.5)
    assert journal(root, run_id) == before
    assert not list((root / ".staging").iterdir())


def test_worker_killed_mid_mysql_dump(env, broker, worker_factory, tmp_path):
    """SIGKILL of the whole worker (main process and pool) during dump_mysql.

    Decision: the run is *abandoned*, not resumed.  With the Redis transport a message
    whose worker vanished is only redelivered after the visibility timeout (hours, so a
    long dump is never delivered twice while it runs); waiting that long for a backup is
    worse than ending it now.  The run's lock stops being heartbeated and expires after
    XIEHE_LOCK_TTL; a live worker's reaper (workers/reaper.py) sees the step recorded
    `running` with no lock for one more TTL, marks the run abandoned with the step and
    cause, removes its staging, frees its locks and publishes the failure, which ends the
    CLI's wait with exit 1.  When the stale message comes back, it is ignored.
    """
    root, client = tmp_path / "backups", broker.client()
    good = good_backup(small(env), worker_factory)
    worker = worker_factory(env)
    proc = start_backup(env)
    run_id = wait_moving(client, "dump_mysql", 20 * 2**20)
    assert list((root / ".staging" / run_id).rglob("*.partial")), "the dump is being written"
    worker.kill()
    survivor = worker_factory(env)
    code, _, err = finish(proc)
    assert code == 1
    assert f"backup {run_id} failed in dump_mysql" in err
    assert "worker executing step dump_mysql stopped" in err
    assert_clean_after_failure(
        env, client, root, [good], run_id, "worker executing step dump_mysql stopped"
    )
    assert journal(root, run_id)["status"] == "abandoned"
    stale_delivery_ignored(client, survivor.logfile, run_id, root)
    assert_next_run_succeeds(env, root)


def test_pool_process_killed_mid_dump_redoes_the_step(env, broker, worker_factory, tmp_path):
    """SIGKILL of the pool process only (the OOM killer's choice), the worker survives.

    The worker rejects the lost task and requeues it at once (reject_on_worker_lost);
    the redelivered step waits for the dead attempt's run lock to expire, finds the run
    still needing the step, and redoes it from a fresh staging directory: the run
    completes with one clean dump.
    """
    root, client = tmp_path / "backups", broker.client()
    worker = worker_factory(env, concurrency=1)
    proc = start_backup(env)
    run_id = wait_moving(client, "dump_mysql", 20 * 2**20)
    pid = worker.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)
    code, _, err = finish(proc, timeout=300)
    assert code == 0, err
    record = journal(root, run_id)
    assert record["status"] == "succeeded"
    assert "delivered again" not in worker.logfile.read_text()
    assert cli(env, "verify", run_id).returncode == 0
    dumps = sorted(p.name for p in (root / "mysql").glob(f"*_{run_id}.sql.zst"))
    assert dumps == [f"{BIG}_{run_id}.sql.zst", f"{SMALL}_{run_id}.sql.zst"]
    assert not list((root / ".staging").iterdir())
    assert lock_keys(client) == []


@pytest.fixture
def big_volume(docker_client, helper_image):
    """A volume with 400 MB of incompressible files: archiving it takes seconds."""
    name = unique("xf_vol")
    fill_volume(docker_client, name, helper_image)
    docker_client.containers.run(
        helper_image,
        ["sh", "-c", "for i in 1 2 3 4; do head -c 100000000 /dev/urandom > /v/big$i; done"],
        volumes={name: {"bind": "/v", "mode": "rw"}},
        remove=True,
    )
    yield name
    for container in docker_client.containers.list(all=True, filters={"label": "xiehe.helper"}):
        if container.labels.get("xiehe.helper") == name:
            container.remove(force=True)
    docker_client.volumes.get(name).remove(force=True)


def test_worker_killed_mid_volume_archive(
    env, broker, worker_factory, tmp_path, big_volume, docker_client
):
    """SIGKILL of the whole worker during archive_volumes: abandoned as for the dump (see
    test_worker_killed_mid_mysql_dump), and the helper container of the dead worker does
    not stop the next run."""
    root, client = tmp_path / "backups", broker.client()
    env = {**small(env), "XIEHE_VOLUMES": big_volume}
    good = good_backup({**env, "XIEHE_VOLUMES": ""}, worker_factory)
    worker = worker_factory(env)
    proc = start_backup(env)
    run_id = wait_moving(client, "archive_volumes", 50 * 2**20)
    worker.kill()
    worker_factory(env)
    code, _, err = finish(proc)
    assert code == 1
    assert "worker executing step archive_volumes stopped" in err
    assert_clean_after_failure(env, client, root, [good], run_id, "archive_volumes")
    assert_next_run_succeeds(env, root)


def test_broker_restart_mid_dump(env, redis_server, worker_factory, tmp_path):
    """The broker's Redis (appendonly, so queued steps survive) restarts during dump_mysql.

    The running step keeps going (progress updates are advisory, its locks persist), the
    CLI waits for the broker to come back.  Celery/kombu 5.7's worker main process may die
    on the lost connection (kombu's ack after a reconnect: "'NoneType' object has no
    attribute 'hostname'"); the deployment restarts it (compose `restart: unless-stopped`)
    and so does a supervisor thread here.  The run then either completes, or is ended by
    the reaper with its cause: in both cases nothing partial is listed, no lock is left and
    the next run succeeds.
    """
    root = tmp_path / "backups"
    broker = redis_server("--appendonly", "yes", "--appendfsync", "always")
    client = broker.client()
    env = {**env, "XIEHE_BROKER_URL": broker.url}
    worker = worker_factory(env)
    proc = start_backup(env)
    run_id = wait_moving(client, "dump_mysql", 20 * 2**20)
    broker.stop()
    time.sleep(2)
    broker.start()
    done = threading.Event()

    def supervise(current=worker) -> None:  # as `restart: unless-stopped` would
        while not done.wait(0.5):
            if current.proc.poll() is not None:
                current = worker_factory(env)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    try:
        code, _, err = finish(proc, timeout=300)
    finally:
        done.set()
        supervisor.join()
    assert "Traceback" not in err
    if code == 0:
        assert journal(root, run_id)["status"] == "succeeded"
        assert cli(env, "verify", run_id).returncode == 0
    else:
        assert f"backup {run_id} failed" in err
        assert_clean_after_failure(env, client, root, [], run_id, "")
    assert not list((root / ".staging").iterdir())
    assert lock_keys(client) == []
    assert_next_run_succeeds(env, root)


def test_mysql_stopped_mid_dump(env, broker, worker_factory, tmp_path, mariadb):
    """MariaDB shut down (SIGTERM) during dump_mysql: the run fails naming MySQL, the
    staging is removed, and once the server is back the next run succeeds."""
    root, client = tmp_path / "backups", broker.client()
    good = good_backup(small(env), worker_factory)
    worker_factory(env)
    proc = start_backup(env)
    run_id = wait_moving(client, "dump_mysql", 20 * 2**20)
    code, err = finish_with_mysql_stopped(proc, mariadb)
    assert code == 1
    assert f"backup {run_id} failed in dump_mysql" in err
    assert "mysql" in err.lower() and "Traceback" not in err
    assert_clean_after_failure(env, client, root, [good], run_id, "mysql")
    assert journal(root, run_id)["failed_step"] == "dump_mysql"
    assert_next_run_succeeds(env, root)


def wait_side_by_side(root: Path, good: str, timeout: float = 120) -> str:
    """The id of the run whose dump_mysql and archive_volumes both run, the dump being
    more than 1 MB in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (root / ".runs").glob("*.json"):
            try:
                steps = json.loads(path.read_text())["steps"] if path.stem != good else {}
            except (OSError, ValueError, KeyError):
                continue
            running = {name for name, record in steps.items() if record["status"] == "running"}
            dumps = list((root / ".staging" / path.stem).rglob("*.sql.zst.partial"))
            if {"dump_mysql", "archive_volumes"} <= running and any(
                p.stat().st_size > 2**20 for p in dumps
            ):
                return path.stem
        time.sleep(0.05)
    raise AssertionError("dump_mysql and archive_volumes never ran side by side")


def test_a_capture_step_failing_beside_another_ends_the_run_once(
    env, broker, worker_factory, tmp_path, mariadb, big_volume
):
    """The capture steps run side by side.  MariaDB stops during dump_mysql while
    archive_volumes reads a 400 MB volume: the volume step is left to finish (nothing
    removes the staging under it), then the step joining the stage ends the run once:
    failed in dump_mysql, staging removed, locks freed, exactly one alert, the good backup
    intact, and the next run succeeds."""
    root, client, hook = tmp_path / "backups", broker.client(), Receiver()
    env = {**env, "XIEHE_VOLUMES": big_volume, "XIEHE_NOTIFY_URLS": hook.url}
    good = good_backup({**small(env), "XIEHE_VOLUMES": ""}, worker_factory)
    worker_factory(env)
    proc = start_backup(env)
    run_id = wait_side_by_side(root, good)
    code, err = finish_with_mysql_stopped(proc, mariadb)
    assert code == 1
    assert f"backup {run_id} failed in dump_mysql" in err
    record = journal(root, run_id)
    assert record["failed_step"] == "dump_mysql"
    assert record["steps"]["archive_volumes"]["status"] == "succeeded"
    assert "verify" not in record["steps"]
    assert_clean_after_failure(env, client, root, [good], run_id, "mysql")
    assert_one_alert(hook, run_id)
    assert_next_run_succeeds(env, root)
    hook.server.shutdown()


def test_a_step_waiting_beside_a_failed_one_is_not_run(
    env, broker, worker_factory, tmp_path, mariadb, big_volume
):
    """One pool process: archive_volumes waits while dump_mysql runs, and MariaDB stops.
    The waiting step is then passed over (not run, not left hanging): the join still gets
    every copy of the run and ends it once."""
    root, client, hook = tmp_path / "backups", broker.client(), Receiver()
    env = {**env, "XIEHE_VOLUMES": big_volume, "XIEHE_NOTIFY_URLS": hook.url}
    worker_factory(env, concurrency=1)
    proc = start_backup(env)
    run_id = wait_moving(client, "dump_mysql", 20 * 2**20)
    code, err = finish_with_mysql_stopped(proc, mariadb)
    assert code == 1
    assert f"backup {run_id} failed in dump_mysql" in err
    record = journal(root, run_id)
    assert "archive_volumes" not in record["steps"], record["steps"]
    assert_clean_after_failure(env, client, root, [], run_id, "mysql")
    assert_one_alert(hook, run_id)
    hook.server.shutdown()


def test_worker_killed_while_capture_steps_run_side_by_side(
    env, broker, worker_factory, tmp_path, big_volume
):
    """SIGKILL of the whole worker while dump_mysql and archive_volumes both run: both
    steps fall silent, and a live worker's reaper abandons the run once, naming both."""
    root, client, hook = tmp_path / "backups", broker.client(), Receiver()
    env = {**env, "XIEHE_VOLUMES": big_volume, "XIEHE_NOTIFY_URLS": hook.url}
    good = good_backup({**small(env), "XIEHE_VOLUMES": ""}, worker_factory)
    worker = worker_factory(env)
    proc = start_backup(env)
    run_id = wait_side_by_side(root, good)
    worker.kill()
    worker_factory(env)
    code, _, err = finish(proc)
    assert code == 1
    assert "stopped (and " in err, err
    record = journal(root, run_id)
    assert record["status"] == "abandoned"
    assert {record["steps"][s]["status"] for s in ("dump_mysql", "archive_volumes")} == {"failed"}
    assert_clean_after_failure(env, client, root, [good], run_id, "stopped")
    assert_one_alert(hook, run_id)
    hook.server.shutdown()


@pytest.fixture
def small_disk(tmp_path):
    """A 30 MB file system as the backup disk: tmpfs, else a loop-mounted ext4 image."""
    mount = tmp_path / "disk"
    mount.mkdir()
    tried = []
    for cmd in (
        ["mount", "-t", "tmpfs", "-o", "size=30m,mode=0700", "tmpfs", str(mount)],
        [
            "sh",
            "-c",
            f"truncate -s 30M {tmp_path}/img && mkfs.ext4 -q {tmp_path}/img && "
            f"mount -o loop {tmp_path}/img {mount}",
        ],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            break
        tried.append(f"{cmd[0]}: {done.stderr.strip()}")
    else:
        pytest.skip("cannot mount a small file system: " + "; ".join(tried))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_mid_artifact(env, broker, worker_factory, tmp_path, small_disk, mariadb):
    """The data grew past the disk: the last backup's size let preflight pass, the dump
    hits ENOSPC; the run fails naming the disk, its staging is removed and the earlier
    good backup is intact."""
    client = broker.client()
    db = unique("xf_grow")
    conn = mariadb.connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(f"CREATE TABLE `{db}`.t (id INT PRIMARY KEY AUTO_INCREMENT, a VARCHAR(255))")
        cur.execute(f"INSERT INTO `{db}`.t (a) VALUES (SHA2(RAND(), 256))")
    env = {**env, "XIEHE_BACKUP_DIR": str(small_disk), "XIEHE_DISK_RESERVE_MB": "0"}
    env["XIEHE_MYSQL_DATABASES"] = db
    good = good_backup(env, worker_factory)
    worker_factory(env)
    with conn.cursor() as cur:  # ~70 MB compressed: more than the disk holds
        cur.execute(f"INSERT INTO `{db}`.t (a) SELECT CONCAT(a, c) FROM `{BIG}`.big")
    proc = cli(env, "backup")
    assert proc.returncode == 1
    failed_id = last_line(proc)
    assert "no space left" in proc.stderr.lower() and str(small_disk) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_clean_after_failure(env, client, small_disk, [good], failed_id, str(small_disk))
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{db}`")
    conn.close()


def test_disk_reserve_refused_in_preflight(env, broker, worker_factory, tmp_path, small_disk):
    """Free space minus the estimate below XIEHE_DISK_RESERVE_MB: refused before writing."""
    client = broker.client()
    env = {**small(env), "XIEHE_BACKUP_DIR": str(small_disk), "XIEHE_DISK_RESERVE_MB": "0"}
    good = good_backup(env, worker_factory)
    files_before = sorted(p for p in small_disk.rglob("*") if ".runs" not in p.parts)
    refuse = {**env, "XIEHE_DISK_RESERVE_MB": "30"}  # the whole disk
    worker_factory(refuse)
    proc = cli(refuse, "backup")
    assert proc.returncode == 1
    failed_id = last_line(proc)
    assert "XIEHE_DISK_RESERVE_MB" in proc.stderr and "disk" in proc.stderr
    record = journal(small_disk, failed_id)
    assert record["failed_step"] == "preflight"
    assert sorted(p for p in small_disk.rglob("*") if ".runs" not in p.parts) == files_before
    assert_clean_after_failure(env, client, small_disk, [good], failed_id, "XIEHE_DISK_RESERVE_MB")


def test_corrupt_artifact_refused(env, broker, worker_factory, tmp_path):
    """One flipped byte in a published dump: verify reports it, list then shows the backup
    failed, a restore refuses it; the other backup stays good."""
    root = tmp_path / "backups"
    env = small(env)
    worker_factory(env)
    first, second = (last_line(cli(env, "backup")) for _ in range(2))
    dump = root / "mysql" / f"{SMALL}_{second}.sql.zst"
    with open(dump, "r+b") as fh:
        fh.seek(dump.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    proc = cli(env, "verify", second)
    assert proc.returncode == 1
    assert f"{SMALL}_{second}.sql.zst" in proc.stdout and "sha256" in proc.stdout
    listed = {b["id"]: b["status"] for b in json.loads(cli(env, "list", "--json").stdout)}
    assert listed == {first: "verified", second: "failed-verification"}
    restore = cli(env, "restore", second, "--yes", timeout=300)
    assert restore.returncode != 0
    assert "Traceback" not in restore.stderr
    assert "failed-verification" in restore.stderr
    assert "nothing was replaced" in restore.stderr
    assert cli(env, "verify", first).returncode == 0
    assert lock_keys(broker.client()) == []
