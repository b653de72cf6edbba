"""doctor against real services: all green on a good configuration; a wrong MySQL password,
an unreachable or stopped Redis, a missing volume each fail with a hint and exit non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producers.cli.main import main
from tests.conftest import all_targets_env, unique
from tests.support.fake_backups import make_backup
from tests.support.servers import free_port
from workers.ops.health import beat_lock_key
from workers.store.layout import Tree


@pytest.fixture
def stack(
    tmp_path, broker, redis_server, scratch_db, mysql_conn, docker_client, helper_image, monkeypatch
):
    """A small XieHe stack: a database, a Redis, a volume mounted by a running container,
    and one good backup."""
    database = scratch_db("doctor")
    with mysql_conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
    volume = docker_client.volumes.create(unique("xt_doctor"))
    container = docker_client.containers.run(
        helper_image,
        ["sleep", "600"],
        name=unique("xt_app"),
        detach=True,
        volumes={volume.name: {"bind": "/data", "mode": "rw"}},
    )
    app_redis = redis_server()
    monkeypatch.setenv("XIEHE_STOP_CONTAINERS", container.name)
    env = all_targets_env(
        broker.url, tmp_path / "backups", database, app_redis.url, volume.name, monkeypatch
    )
    env["XIEHE_STOP_CONTAINERS"] = container.name
    tree = Tree(tmp_path / "backups")
    tree.ensure()
    make_backup(tree, datetime.now(UTC), b"not checked by doctor")
    yield {"env": env, "redis": app_redis, "volume": volume.name, "container": container.name}
    container.remove(force=True)
    volume.remove(force=True)


def doctor(capsys) -> tuple[int, dict[str, dict], str]:
    capsys.readouterr()
    code = main(["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    main(["doctor"])
    return code, checks, capsys.readouterr().out


@pytest.fixture
def beat(stack, broker, tmp_path):
    """A real `celery beat` with the redbeat scheduler, holding its lock in the broker."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "beat",
            "-S",
            "redbeat.RedBeatScheduler",
            "-l",
            "info",
        ],
        env=stack["env"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not broker.client().exists(beat_lock_key()):
        assert proc.poll() is None and time.monotonic() < deadline, "beat did not start"
        time.sleep(0.2)
    yield proc
    proc.terminate()
    proc.wait(30)


def test_all_green_on_a_good_configuration(stack, worker_factory, beat, capsys):
    worker_factory(stack["env"])
    code, checks, text = doctor(capsys)
    assert code == 0, text
    assert {n for n, c in checks.items() if not c["ok"]} == set()
    assert {
        "mysql",
        "mysql binlog",
        "redis",
        "docker",
        f"volume {stack['volume']}",
        f"container {stack['container']}",
        "disk",
        "broker",
        "worker",
        "beat",
        "off-site",
        "last good backup",
    } == set(checks)
    assert checks["off-site"]["warn"] and "XIEHE_OFFSITE" in checks["off-site"]["hint"]
    assert f"{stack['container']}:/data (running)" in checks[f"volume {stack['volume']}"]["detail"]
    assert "FAIL" not in text


def expect_failure(capsys, name: str, detail: str, hint: str) -> str:
    code, checks, text = doctor(capsys)
    assert code == 1
    assert not checks[name]["ok"], checks[name]
    assert detail in checks[name]["detail"]
    assert hint in checks[name]["hint"]
    assert f"[FAIL] {name}" in text and f"fix: {checks[name]['hint']}" in text
    return text + json.dumps(checks)


def test_a_wrong_mysql_password_fails_with_a_hint(stack, monkeypatch, capsys):
    monkeypatch.setenv("XIEHE_MYSQL_PASSWORD", "s3cret-wrong")
    assert "s3cret-wrong" not in expect_failure(capsys, "mysql", "denied", "XIEHE_MYSQL_PASSWORD")


def test_an_unreachable_redis_fails_with_a_hint(stack, monkeypatch, capsys):
    monkeypatch.setenv("XIEHE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    expect_failure(capsys, "redis", "", "is redis-server running")


def test_a_stopped_redis_is_named(stack, capsys):
    stack["redis"].stop()
    expect_failure(capsys, "redis", "", "XIEHE_REDIS_URL")


def test_a_missing_volume_fails_with_a_hint(stack, monkeypatch, capsys):
    monkeypatch.setenv("XIEHE_VOLUMES", "xt_no_such_volume")
    expect_failure(capsys, "volume xt_no_such_volume", "does not exist", "docker volume create")


def test_a_stopped_container_and_an_old_backup_fail(stack, docker_client, monkeypatch, capsys):
    docker_client.containers.get(stack["container"]).stop(timeout=1)
    monkeypatch.setenv("XIEHE_MAX_BACKUP_AGE_HOURS", "1")
    tree = Tree(Path(stack["env"]["XIEHE_BACKUP_DIR"]))
    for path in tree.root.glob("manifest_*.json"):
        path.unlink()
    make_backup(tree, datetime(2024, 1, 1, tzinfo=UTC), b"old")
    expect_failure(capsys, f"container {stack['container']}", "exited", "docker start")
    expect_failure(capsys, "last good backup", "h old (limit 1 h)", "xiehe-backup backup")


def test_a_docker_host_without_its_worker_fails(stack, worker_factory, monkeypatch, capsys):
    """The shared queue's worker answers, the Docker host's queue has none: volume steps
    would wait forever, so doctor names that queue."""
    worker_factory({**stack["env"], "XIEHE_QUEUE": "xt-shared"}, queues="xt-shared")
    monkeypatch.setenv("XIEHE_QUEUE", "xt-shared")
    monkeypatch.setenv("XIEHE_DOCKER_QUEUE", "xt-docker-host")
    expect_failure(capsys, "worker", "no worker consumes queue xt-docker-host", "-Q QUEUE")
