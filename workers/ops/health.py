"""`doctor` and the scheduled health task: each check names what is wrong and how to fix it.

A check is {name, ok, detail, hint} (+ warn for a fact worth knowing that fails nothing).
Checks never raise: a failure to check is a failing check.  No secret appears in them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import redis

from workers import liveness
from workers.config import Settings
from workers.errors import TargetError
from workers.offsite import catalog
from workers.offsite import settings as offsite_settings
from workers.offsite.rclone import Rclone
from workers.offsite.settings import OffsiteSettings, Remote
from workers.ops import settings as ops_settings
from workers.store import manifest as manifests
from workers.store import space as store_space
from workers.store.layout import Tree
from workers.targets import docker_engine, mysql, volumes
from workers.targets import redis as redis_target

BINLOG_HINT = (
    "point-in-time recovery needs the binary log: in my.cnf [mysqld] set log_bin=mysql-bin, "
    "binlog_format=ROW, server_id=1, expire_logs_days=7, then restart MySQL"
)


def _run(name: str, hint: str, fn: Callable[[], str | tuple[str, bool]]) -> dict:
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - any error is this check's failure
        return {"name": name, "ok": False, "detail": str(exc) or type(exc).__name__, "hint": hint}
    detail, warn = out if isinstance(out, tuple) else (out, False)
    return {"name": name, "ok": True, "detail": detail, "hint": hint if warn else "", "warn": warn}


def _fail(message: str) -> None:
    raise TargetError("check", message)


def _mysql_checks(settings: Settings) -> list[dict]:
    m = settings.mysql
    found: dict = {}

    def connect() -> str:
        found.update(mysql.check(m))
        missing = [d for d in m.databases if d not in found["databases"]]
        if missing:
            _fail(f"database(s) {', '.join(missing)} not found on {m.host}:{m.port}")
        return f"{found['server_version']} at {m.host}:{m.port} as {m.user}"

    def binlog() -> tuple[str, bool]:
        """Point-in-time recovery needs log_bin, ROW format and a server_id: a warning."""
        from workers.targets.binlog import binlog_problems

        if not found:
            _fail("not checked: MySQL is unreachable")
        problems = binlog_problems(m)
        return (
            ("ready for point-in-time recovery", False)
            if not problems
            else ("; ".join(problems), True)
        )

    return [
        _run(
            "mysql",
            "check XIEHE_MYSQL_HOST/PORT/USER and XIEHE_MYSQL_PASSWORD(_FILE); the "
            "grants are listed in workers/targets/mysql.py; XIEHE_MYSQL_DATABASES must exist",
            connect,
        ),
        _run("mysql binlog", BINLOG_HINT, binlog),
    ]


def _redis_check(settings: Settings) -> dict:
    def check() -> str:
        info = redis_target.check(settings.redis)
        keys = sum(info["keys"].values())
        return f"redis {info['redis_version']}, {keys} keys"

    return _run(
        "redis",
        "is redis-server running? check XIEHE_REDIS_URL (host, port, password, "
        "or XIEHE_REDIS_URL_FILE)",
        check,
    )


def _docker_checks(settings: Settings) -> list[dict]:
    engine_box: list = []

    def engine() -> str:
        engine_box.append(docker_engine.client(settings.docker_url))
        return f"engine {engine_box[0].version().get('Version', '?')}"

    checks = [
        _run(
            "docker",
            "start dockerd; the worker needs /var/run/docker.sock or XIEHE_DOCKER_URL",
            engine,
        )
    ]
    if not engine_box:
        return checks
    client = engine_box[0]
    for name in settings.volumes:
        checks.append(
            _run(
                f"volume {name}",
                f"create it (`docker volume create {name}`) or fix "
                "XIEHE_VOLUMES (compose prefixes names with the project name)",
                lambda name=name: _volume(client, name),
            )
        )
    containers = list(settings.stop_containers)
    if settings.redis and settings.redis.container:
        containers.append(settings.redis.container)
    for name in containers:
        checks.append(
            _run(
                f"container {name}",
                f"`docker start {name}`, or fix XIEHE_STOP_CONTAINERS / XIEHE_REDIS_CONTAINER",
                lambda name=name: _container(client, name),
            )
        )
    return checks


def _volume(client, name: str) -> str:
    info = volumes.check(client, name)
    users = []
    for c in client.containers.list(all=True, filters={"volume": name}):
        for mount in c.attrs["Mounts"]:
            if mount.get("Name") == name:
                users.append(f"{c.name}:{mount['Destination']} ({c.status})")
    return f"at {info['mountpoint']}; mounted by {', '.join(users) or 'no container'}"


def _container(client, name: str) -> str:
    try:
        status = client.containers.get(name).status
    except Exception as exc:  # noqa: BLE001 - NotFound or an engine error
        _fail(f"not found ({exc})")
    if status != "running":
        _fail(f"is {status}")
    return "running"


def _disk(settings: Settings, tree: Tree) -> str:
    tree.ensure()
    free = store_space.free_bytes(tree.root)
    newest = manifests.read_all(tree)[-1:] or [None]
    need = int((newest[0] or {}).get("size_bytes", 0) * 1.2)
    if free - need < settings.reserve_bytes:
        _fail(
            f"{free >> 20} MiB free, the next backup needs about {need >> 20} MiB and "
            f"{settings.reserve_bytes >> 20} MiB must stay free"
        )
    return f"{free >> 20} MiB free in {tree.root}"


def _broker_checks(settings: Settings) -> list[dict]:
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3)
    hint = "start the queue's Redis; check XIEHE_BROKER_URL"
    broker = _run("broker", hint, lambda: "reachable" if client.ping() else "no PONG")
    if not broker["ok"]:
        return [broker]
    return [
        broker,
        _run(
            "worker",
            "start a worker on each queue: `celery -A workers worker -Q QUEUE`",
            lambda: _worker(client, settings),
        ),
        _run(
            "beat",
            "start the scheduler: `celery -A workers beat -S redbeat.RedBeatScheduler`",
            lambda: _beat(client),
        ),
    ]


def _worker(client: redis.Redis, settings: Settings) -> str:
    """A live worker on the shared queue and on the Docker host's (workers/liveness.py)."""
    heard = liveness.consumers(client, settings.queues())
    missing = [queue for queue, names in heard.items() if not names]
    if missing:
        queues = ", ".join(missing)
        _fail(f"no worker consumes queue {queues} (none heard within {liveness.STALE} s)")
    return "; ".join(f"queue {queue}: {', '.join(names)}" for queue, names in heard.items())


def beat_lock_key() -> str:
    """The key a running beat holds (redbeat's lock, under the app's key prefix)."""
    from redbeat.schedulers import RedBeatConfig

    from workers.celery import app

    return RedBeatConfig(app).lock_key


def _beat(client: redis.Redis) -> str:
    if not client.exists(beat_lock_key()):
        _fail("no beat holds the scheduler lock (scheduled backups do not run)")
    return "running (holds the scheduler lock)"


def last_good_age_hours(tree: Tree, now: datetime | None = None) -> float | None:
    good = [m for m in manifests.read_all(tree) if m.get("status") == "verified"]
    if not good:
        return None
    newest = max(datetime.fromisoformat(m["finished_at"]) for m in good)
    return ((now or datetime.now(UTC)) - newest).total_seconds() / 3600


def _freshness(tree: Tree, max_hours: int) -> str:
    age = last_good_age_hours(tree)
    if age is None:
        _fail("there is no verified backup")
    if age > max_hours:
        _fail(f"the last good backup is {age:.1f} h old (limit {max_hours} h)")
    return f"the last good backup is {age:.1f} h old (limit {max_hours} h)"


def _offsite_check(remote: Remote, offsite: OffsiteSettings, tree: Tree) -> dict:
    def check() -> tuple[str, bool]:
        held = catalog.manifests(Rclone(remote, offsite))
        newest = held[-1]["id"] if held else "none"
        detail = f"{remote.url}: {len(held)} complete backups, newest {newest}"
        local = [m for m in manifests.read_all(tree) if m.get("status") == "verified"]
        behind = bool(local) and local[-1]["id"] not in {m["id"] for m in held}
        unchecked = remote.kind == "sftp" and "known_hosts_file" not in remote.options
        if behind:
            detail += f"; the newest local backup {local[-1]['id']} is not there yet"
        if unchecked:
            detail += "; the server's host key is not checked"
        return detail, behind or unchecked

    hint = (
        "check the network and credentials (XIEHE_OFFSITE_*); the next backup sends what is "
        "missing; add known_hosts_file=... to an sftp URL so the server is authenticated"
    )
    return _run(f"off-site {remote.name}", hint, check)


def run_checks(settings: Settings) -> list[dict]:
    ops = ops_settings.load()
    tree = Tree(settings.backup_dir)
    checks: list[dict] = []
    if settings.mysql:
        checks += _mysql_checks(settings)
    if settings.redis:
        checks.append(_redis_check(settings))
    if (
        settings.volumes
        or settings.stop_containers
        or (settings.redis and settings.redis.container)
    ):
        checks += _docker_checks(settings)
    checks.append(
        _run(
            "disk",
            "prune old backups (`xiehe-backup prune`), add space, or lower XIEHE_DISK_RESERVE_MB",
            lambda: _disk(settings, tree),
        )
    )
    checks += _broker_checks(settings)
    offsite = offsite_settings.load()
    checks += [_offsite_check(remote, offsite, tree) for remote in offsite.remotes] or [
        _run(
            "off-site",
            "set XIEHE_OFFSITE to an SFTP or S3 remote (README: Off-site copies)",
            lambda: ("none configured: a lost host loses its backups too", True),
        )
    ]
    checks.append(
        _run(
            "last good backup",
            "run `xiehe-backup backup`; see failed runs with "
            "`xiehe-backup list --all` and check the worker and beat",
            lambda: _freshness(tree, ops.max_backup_age_hours),
        )
    )
    return checks


def scheduled(settings: Settings) -> dict:
    """The scheduled health task (and dead man's switch): one notification if any check
    fails, naming every failing check and its fix."""
    from workers.ops import alerts

    checks = run_checks(settings)
    failing = [c for c in checks if not c["ok"]]
    if failing:
        alerts.notify(
            {
                "event": "health.failed",
                "status": "failed",
                "checks": [{k: c[k] for k in ("name", "detail", "hint")} for c in failing],
            }
        )
    return {"ok": not failing, "failing": [c["name"] for c in failing]}
