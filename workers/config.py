"""Environment (and *_FILE secrets) -> one typed, immutable settings object.

Every setting is read here and nowhere else.  A malformed value raises ConfigError whose
message is one line naming the variable, so the CLI can stop before anything is enqueued.
Secrets are kept out of repr() so they never reach a log or a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
COMPRESSIONS = ("zstd", "gzip", "none")
VOLUME_READS = ("auto", "engine")  # XIEHE_VOLUME_READ
_NAME = re.compile(r"^[^\x00/\\]{1,255}$")

# Level 1, not zstd's usual 3: on the XieHe-like bench data (SQL dumps, DICOM-like files)
# multi-threaded level 1 wrote no bigger artifacts (58.5 vs 60.7 MB of a 274 MB dump) at
# less than half the CPU (0.35 vs 0.86 s), which a 2-core host needs for the database.
DEFAULT_ZSTD_LEVEL = 1


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class MySQLSettings:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    databases: tuple[str, ...]  # empty: every non-system database
    system_db: str
    parallel: int


@dataclass(frozen=True)
class RedisSettings:
    url: str = field(repr=False)  # may hold a password
    container: str | None


@dataclass(frozen=True)
class Settings:
    broker_url: str = field(repr=False)
    backup_dir: Path
    mysql: MySQLSettings | None
    mysql_restore: MySQLSettings | None  # restore credentials; the backup user by default
    redis: RedisSettings | None
    volumes: tuple[str, ...]
    helper_image: str
    volume_read: str  # auto: a volume is read in place when this process can reach it; engine
    compression: str
    zstd_level: int
    stop_containers: tuple[str, ...]  # app services stopped during a restore
    stop_volumes_for: tuple[str, ...]  # volumes whose running users may be stopped to tar them
    reserve_bytes: int
    lock_ttl: int
    lock_wait: int  # seconds a run waits for a target another run holds, then gives up
    age_recipients: tuple[str, ...] = field(repr=False)
    age_identity_file: Path | None
    docker_url: str | None
    queue: str  # the shared queue: database steps, verification, publishing
    docker_queue: str  # the queue of the worker on the Docker host that holds the volumes

    def queues(self) -> list[str]:
        """Every queue this deployment's runs use: the shared one, the Docker host's."""
        return list(dict.fromkeys((self.queue, self.docker_queue)))

    def volumes_in_place(self) -> bool:
        """Whether a volume is read and restored in place when this worker can reach it."""
        return self.volume_read == "auto"

    def kinds(self) -> tuple[str, ...]:
        """The kinds of target configured, in backup order."""
        out = []
        if self.mysql:
            out.append("mysql")
        if self.redis:
            out.append("redis")
        if self.volumes:
            out.append("volumes")
        return tuple(out)


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """NAME, or the content of the file NAME_FILE points to (Docker secrets)."""
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return env.get(name)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())
    for item in items:
        if not _NAME.match(item):
            raise ConfigError(f"{name}: invalid name {item!r}")
    return items


def _redis_url(name: str, raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        raise ConfigError(f"{name}: expected redis://host:port/db, got a malformed URL")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{name}: the port is not a number") from None
    return raw


def _mysql(env: Mapping[str, str]) -> MySQLSettings | None:
    host = env.get("XIEHE_MYSQL_HOST", "").strip()
    if not host:
        return None
    user = env.get("XIEHE_MYSQL_USER", "").strip()
    if not user:
        raise ConfigError("XIEHE_MYSQL_USER: required when XIEHE_MYSQL_HOST is set")
    return MySQLSettings(
        host=host,
        port=_int(env, "XIEHE_MYSQL_PORT", 3306, minimum=1),
        user=user,
        password=_secret(env, "XIEHE_MYSQL_PASSWORD") or "",
        databases=_list(env, "XIEHE_MYSQL_DATABASES"),
        system_db=env.get("XIEHE_MYSQL_SYSTEM_DB", "medical_system").strip() or "medical_system",
        parallel=_int(env, "XIEHE_MYSQL_PARALLEL", 2, minimum=1),
    )


def _mysql_restore(env: Mapping[str, str], backup: MySQLSettings | None) -> MySQLSettings | None:
    """Least privilege: the backup user only reads; a separate user may hold the rights to
    drop and load databases (XIEHE_MYSQL_RESTORE_USER / _PASSWORD / _PASSWORD_FILE)."""
    user = env.get("XIEHE_MYSQL_RESTORE_USER", "").strip()
    if backup is None or not user:
        return backup
    return replace(backup, user=user, password=_secret(env, "XIEHE_MYSQL_RESTORE_PASSWORD") or "")


def _redis(env: Mapping[str, str]) -> RedisSettings | None:
    url = _secret(env, "XIEHE_REDIS_URL")
    if not url:
        return None
    return RedisSettings(
        url=_redis_url("XIEHE_REDIS_URL", url.strip()),
        container=env.get("XIEHE_REDIS_CONTAINER", "").strip() or None,
    )


def worker_limits(env: Mapping[str, str]) -> tuple[int, int]:
    """The Celery app's own settings: (the longest run in seconds, the memory bound of a pool
    process in MB, 0 for none)."""
    return (
        _int(env, "XIEHE_LONGEST_RUN_SECONDS", 6 * 3600, minimum=60),
        _int(env, "XIEHE_WORKER_MAX_MEMORY_MB", 1024),
    )


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    worker_limits(env)  # read by the Celery app as it loads; refused here first, by any command
    compression = env.get("XIEHE_COMPRESSION", "zstd").strip().lower() or "zstd"
    if compression not in COMPRESSIONS:
        raise ConfigError(f"XIEHE_COMPRESSION: expected one of {', '.join(COMPRESSIONS)}")
    recipients = _secret(env, "XIEHE_AGE_RECIPIENTS") or ""
    recipient_list = tuple(
        r.strip() for r in re.split(r"[,\n]", recipients) if r.strip() and not r.startswith("#")
    )
    for r in recipient_list:
        if not r.startswith("age1"):
            raise ConfigError("XIEHE_AGE_RECIPIENTS: every recipient must be an age1... key")
    identity = env.get("XIEHE_AGE_IDENTITY_FILE", "").strip()
    volume_read = env.get("XIEHE_VOLUME_READ", "auto").strip().lower() or "auto"
    if volume_read not in VOLUME_READS:
        raise ConfigError(f"XIEHE_VOLUME_READ: expected one of {', '.join(VOLUME_READS)}")
    return Settings(
        broker_url=_redis_url(
            "XIEHE_BROKER_URL", _secret(env, "XIEHE_BROKER_URL") or "redis://127.0.0.1:6379/0"
        ),
        backup_dir=Path(env.get("XIEHE_BACKUP_DIR", "./backups")).absolute(),
        mysql=(mysql := _mysql(env)),
        mysql_restore=_mysql_restore(env, mysql),
        redis=_redis(env),
        volumes=_list(env, "XIEHE_VOLUMES"),
        helper_image=env.get("XIEHE_HELPER_IMAGE", "alpine:3.20").strip() or "alpine:3.20",
        volume_read=volume_read,
        compression=compression,
        zstd_level=_int(env, "XIEHE_ZSTD_LEVEL", DEFAULT_ZSTD_LEVEL, minimum=1),
        stop_containers=_list(env, "XIEHE_STOP_CONTAINERS"),
        stop_volumes_for=_list(env, "XIEHE_VOLUMES_ALLOW_STOP"),
        reserve_bytes=_int(env, "XIEHE_DISK_RESERVE_MB", 512) * 1024 * 1024,
        lock_ttl=_int(env, "XIEHE_LOCK_TTL", 120, minimum=10),
        lock_wait=_int(env, "XIEHE_LOCK_WAIT", 30),
        age_recipients=recipient_list,
        age_identity_file=Path(identity) if identity else None,
        docker_url=env.get("XIEHE_DOCKER_URL", "").strip() or None,
        queue=env.get("XIEHE_QUEUE", "").strip() or "xiehe-backup",
        docker_queue=env.get("XIEHE_DOCKER_QUEUE", "").strip()
        or env.get("XIEHE_QUEUE", "").strip()
        or "xiehe-backup",
    )
