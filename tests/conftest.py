"""Shared fixtures: real Docker, private Redis servers, a private broker, real workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pymysql
import pytest

from tests.support.offsite import S3Server, SftpServer
from tests.support.servers import RedisServer, Worker

HELPER_IMAGE = os.environ.get("XIEHE_TEST_HELPER_IMAGE", "xiehe/helper:busybox")
REDIS_IMAGE = os.environ.get("XIEHE_TEST_REDIS_IMAGE", "xiehe/redis:local")
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker engine; tests needing it skip, saying why, when it is unreachable."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        pytest.skip(f"Docker engine unreachable ({exc}); start dockerd (ops/ensure_services.sh)")
    return client


@pytest.fixture(scope="session")
def helper_image(docker_client) -> str:
    try:
        docker_client.images.get(HELPER_IMAGE)
    except Exception:  # noqa: BLE001
        subprocess.run(["bash", "ops/images/build_helper_image.sh", HELPER_IMAGE], check=True)
    return HELPER_IMAGE


@pytest.fixture
def redis_server(tmp_path):
    servers: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", *extra)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> RedisServer:
    """The queue's own Redis, so tests may restart it and never touch the shared one."""
    server = RedisServer(tmp_path_factory.mktemp("broker"))
    yield server
    server.stop()


@pytest.fixture
def mysql_conn():
    conn = pymysql.connect(**MYSQL, autocommit=True, charset="utf8mb4")
    yield conn
    conn.close()


@pytest.fixture
def scratch_db(mysql_conn):
    """Unique database names, dropped after the test."""
    names: list[str] = []

    def make(prefix: str = "xt") -> str:
        name = unique(prefix)
        names.append(name)
        return name

    yield make
    with mysql_conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def worker_factory(tmp_path):
    workers: list[Worker] = []

    def make(env: dict[str, str], concurrency: int = 2, queues: str = "") -> Worker:
        log = tmp_path / f"worker{len(workers)}.log"
        worker = Worker(env, log, concurrency, queues).start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def base_env(broker_url: str, backup_dir: Path) -> dict[str, str]:
    """An environment with no target configured: tests add the ones they use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIEHE_")}
    env.update(
        XIEHE_BROKER_URL=broker_url,
        XIEHE_BACKUP_DIR=str(backup_dir),
        XIEHE_HELPER_IMAGE=HELPER_IMAGE,
        XIEHE_DISK_RESERVE_MB="64",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env


def all_targets_env(
    broker_url: str, backup_dir: Path, database: str, redis_url: str, volume: str, monkeypatch
) -> dict[str, str]:
    """Every kind of target, MySQL as root, exported to this process too (for operations
    the test runs in-process)."""
    env = base_env(broker_url, backup_dir)
    env.update(
        XIEHE_MYSQL_HOST=MYSQL["host"],
        XIEHE_MYSQL_PORT=str(MYSQL["port"]),
        XIEHE_MYSQL_USER=MYSQL["user"],
        XIEHE_MYSQL_DATABASES=database,
        XIEHE_REDIS_URL=redis_url,
        XIEHE_VOLUMES=volume,
    )
    for key, value in env.items():
        if key.startswith("XIEHE_"):
            monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def stack(mysql_conn, scratch_db, redis_server, docker_client, helper_image, broker, tmp_path):
    """A filled XieHe-like stack and the environment of a worker that backs it up."""
    from tests.support.stack import Stack, fill_mysql, fill_redis, fill_volume
    from workers.config import MySQLSettings

    broker.client().flushall()  # no run or lock of an earlier test leaks into this one
    db = scratch_db("xs")
    fill_mysql(mysql_conn, db)
    data_redis = redis_server()
    fill_redis(data_redis.url)
    volume = unique("xiehe_vol")
    fill_volume(docker_client, volume, helper_image)
    settings = MySQLSettings("127.0.0.1", 3306, "root", "", (db,), "medical_system", 2)
    backup_user, restore_user = mysql_users(mysql_conn, db)
    env = base_env(broker.url, tmp_path / "backups")
    env.update(
        XIEHE_MYSQL_HOST="127.0.0.1",
        XIEHE_MYSQL_PORT="3306",
        XIEHE_MYSQL_USER=backup_user,
        XIEHE_MYSQL_PASSWORD=BACKUP_PASSWORD,
        XIEHE_MYSQL_RESTORE_USER=restore_user,
        XIEHE_MYSQL_RESTORE_PASSWORD=RESTORE_PASSWORD,
        XIEHE_MYSQL_DATABASES=db,
        XIEHE_REDIS_URL=data_redis.url,
        XIEHE_VOLUMES=volume,
    )
    yield Stack(settings, db, data_redis.url, [volume], docker_client, helper_image), env
    for name in [volume]:
        with contextlib.suppress(Exception):
            docker_client.volumes.get(name).remove(force=True)
    with mysql_conn.cursor() as cur:
        for user in (backup_user, restore_user):
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


BACKUP_PASSWORD = "backup-pw-Xq7"
RESTORE_PASSWORD = "restore-pw-Zk9"


def mysql_users(conn, db: str) -> tuple[str, str]:
    """The README's least-privilege accounts: one that only reads, one that may restore."""
    backup_user, restore_user = unique("xbk"), unique("xrs")
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{backup_user}'@'%' IDENTIFIED BY '{BACKUP_PASSWORD}'")
        cur.execute(f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{db}`.* TO '{backup_user}'@'%'")
        cur.execute(f"GRANT SELECT ON `mysql`.`proc` TO '{backup_user}'@'%'")
        cur.execute(f"GRANT RELOAD, BINLOG MONITOR ON *.* TO '{backup_user}'@'%'")
        cur.execute(f"CREATE USER '{restore_user}'@'%' IDENTIFIED BY '{RESTORE_PASSWORD}'")
        cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{restore_user}'@'%'")
        cur.execute(f"GRANT ALL PRIVILEGES ON `drill\\_%`.* TO '{restore_user}'@'%'")
        cur.execute(f"GRANT SET USER ON *.* TO '{restore_user}'@'%'")
    return backup_user, restore_user


def require_offsite_tools(*tools: str, root: bool = False) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (ops/ensure_services.sh installs them)")
    if root and os.geteuid() != 0:
        pytest.skip(
            "the SFTP test server needs root (a user of its own, sshd privilege separation)"
        )


@pytest.fixture
def sftp_server(tmp_path):
    require_offsite_tools("rclone", "sshd", "ssh-keygen", root=True)
    server = SftpServer(tmp_path / "sftp", unique("dr"))
    yield server
    server.close()


@pytest.fixture
def s3_server(tmp_path):
    require_offsite_tools("rclone", "moto_server")
    server = S3Server(tmp_path / "s3")
    yield server
    server.close()
