"""Flower as a real process: auth from a secret file, each step of a run visible as a task,
no password anywhere in its API, the task list kept across a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import base_env
from tests.support.cli import cli, last_line
from tests.support.servers import free_port, spawn, stop_group

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    "backup.preflight",
    "backup.dump_mysql",
    "backup.snapshot_redis",
    "backup.verify",
    "backup.publish",
    "backup.replicate",
    "backup.prune",
    "backup.notify",
}


class Flower:
    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.port = int(env["XIEHE_FLOWER_PORT"])
        self.logfile = logfile
        script = ["sh", str(ROOT / "ops/scripts/flower.sh")]
        self.proc = spawn(script, {**env, "PYTHON": sys.executable}, logfile)
        deadline = time.monotonic() + 30
        while "Connected to redis" not in logfile.read_text():
            assert self.proc.poll() is None, logfile.read_text()
            assert time.monotonic() < deadline, logfile.read_text()
            time.sleep(0.2)

    def get(self, path: str, auth=None) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", auth=auth, timeout=10)

    def stop(self) -> None:
        stop_group(self.proc)


@pytest.fixture
def mysql_user(mysql_conn, scratch_db):
    """A database with rows, and a MySQL account with a password that must never leak."""
    db, user, password = scratch_db("xf"), f"xf_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with mysql_conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(f"CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v TEXT)")
        cur.execute(f"INSERT INTO `{db}`.t VALUES (1, 'a'), (2, 'b')")
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT ALL ON *.* TO '{user}'@'%'")
    yield db, user, password
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def flower_environment(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Flower's settings: basic auth from a 0600 secret file, its own port and state file."""
    auth_file = tmp_path / "flower_auth"
    auth_file.write_text("admin:flower-pw\n")
    auth_file.chmod(0o600)
    return {
        **env,
        "XIEHE_FLOWER_BASIC_AUTH_FILE": str(auth_file),
        "XIEHE_FLOWER_PORT": str(free_port()),
        "XIEHE_FLOWER_ADDRESS": "127.0.0.1",
        "XIEHE_FLOWER_DB": str(tmp_path / "flower" / "flower.db"),
    }


def run_tasks(flower: Flower, auth, backup_id: str) -> dict[str, dict]:
    tasks = flower.get("/api/tasks", auth).json().values()
    return {t["name"]: t for t in tasks if backup_id in (t.get("args") or "")}


def test_flower_needs_auth_shows_every_step_and_no_secret(
    tmp_path, redis_server, worker_factory, mysql_user
):
    db, user, mysql_password = mysql_user
    redis_password = uuid.uuid4().hex
    broker, target = redis_server(), redis_server("--requirepass", redis_password)
    redis.Redis(port=target.port, password=redis_password).set("study:1", "x" * 4096)
    env = base_env(broker.url, tmp_path / "backups")
    env.update(
        XIEHE_REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{target.port}/0",
        XIEHE_MYSQL_HOST="127.0.0.1",
        XIEHE_MYSQL_USER=user,
        XIEHE_MYSQL_DATABASES=db,
        XIEHE_MYSQL_PASSWORD=mysql_password,
    )
    flower_env = flower_environment(env, tmp_path)
    flower = Flower(flower_env, tmp_path / "flower.log")
    worker_factory(env)
    auth = ("admin", "flower-pw")

    assert flower.get("/api/tasks").status_code == 401
    assert flower.get("/api/tasks", ("admin", "wrong")).status_code == 401
    assert flower.get("/").status_code == 401
    out = cli(env, "backup")
    assert out.returncode == 0, out.stderr
    backup_id = last_line(out)

    def every_step_succeeded() -> bool:
        # The run ends in its last step, a moment before that task's own success event:
        # the CLI may return before Flower has seen it.
        tasks = run_tasks(flower, auth, backup_id)
        return set(tasks) == STEPS and all(t["state"] == "SUCCESS" for t in tasks.values())

    deadline = time.monotonic() + 30
    while not every_step_succeeded() and time.monotonic() < deadline:
        time.sleep(0.5)
    tasks = run_tasks(flower, auth, backup_id)
    assert set(tasks) == STEPS
    assert {t["state"] for t in tasks.values()} == {"SUCCESS"}
    for task in tasks.values():
        detail = flower.get(f"/api/task/info/{task['uuid']}", auth).text
        assert mysql_password not in detail and redis_password not in detail
    listing = flower.get("/api/tasks", auth).text + flower.get("/api/workers", auth).text
    assert mysql_password not in listing and redis_password not in listing
    assert "flower-pw" not in " ".join(flower.proc.args)

    flower.stop()  # the task list survives a restart
    flower = Flower(flower_env, tmp_path / "flower2.log")
    try:
        assert set(run_tasks(flower, auth, backup_id)) == STEPS
    finally:
        flower.stop()


def test_flower_shows_a_running_steps_progress(tmp_path, redis_server, worker_factory):
    """Flower's list is built from events: a running step sends task-progress events whose
    result reads "<bytes> of <total>", so the operator sees it move while it runs."""
    broker, target = redis_server(), redis_server("--repl-diskless-sync-delay", "0")
    data = redis.Redis(port=target.port)
    for i in range(250):
        data.set(f"image:{i}", os.urandom(1 << 20))  # incompressible: every step moves it all
    env = base_env(broker.url, tmp_path / "backups")
    env["XIEHE_REDIS_URL"] = target.url
    flower = Flower(flower_environment(env, tmp_path), tmp_path / "flower.log")
    worker_factory(env)
    auth = ("admin", "flower-pw")
    cli = subprocess.Popen(
        [sys.executable, "-m", "producers.cli.main", "backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    try:
        while cli.poll() is None:
            for task in flower.get("/api/tasks", auth).json().values():
                if task["state"] == "PROGRESS" and " of " in str(task.get("result")):
                    seen.add(task["name"])
            time.sleep(0.1)
    finally:
        flower.stop()
    assert cli.returncode == 0, cli.stderr.read()
    assert "backup.snapshot_redis" in seen, seen
