"""Secrets stay secret during a real backup (issue 6, item 2).

The MySQL password comes from XIEHE_MYSQL_PASSWORD_FILE, the Redis password inside
XIEHE_REDIS_URL, the off-site S3 secret key from XIEHE_OFFSITE_OSS_SECRET_ACCESS_KEY.  While
the backup runs (rclone included), no process's command line holds any; after
it, none is in the worker's log, in any file of the backup tree (artifacts' names,
manifest, backup_info, journal) nor in any value the broker stores (task messages,
results, progress, locks).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tests.conftest import BACKUP_PASSWORD
from tests.support.cli import cli, last_line
from tests.support.offsite import S3Server
from tests.support.stack import fill_redis

REDIS_PASSWORD = "redis-pw-Qm4TzV8"


def command_lines_with(secrets: list[bytes], stop: threading.Event, found: list) -> None:
    while not stop.is_set():
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            found += [(proc.name, cmdline[:200]) for s in secrets if s in cmdline]
        stop.wait(0.05)


def broker_values(client) -> list[bytes]:
    """Every value of every key, read by type (DUMP would compress long strings)."""
    out: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            out += [b"%s=%s" % kv for kv in client.hgetall(key).items()]
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(client.smembers(key))
        elif kind == "zset":
            out += client.zrange(key, 0, -1)
        elif kind == "stream":
            out += [repr(entry).encode() for entry in client.xrange(key)]
        out.append(key)
    return out


def test_passwords_appear_nowhere(stack, redis_server, worker_factory, broker, s3_server, tmp_path):
    st, env = stack
    secret_redis = redis_server("--requirepass", REDIS_PASSWORD)
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{secret_redis.port}/0"
    fill_redis(url)
    password_file = tmp_path / "mysql_password"
    password_file.write_text(BACKUP_PASSWORD + "\n")
    password_file.chmod(0o600)
    env = {k: v for k, v in env.items() if k != "XIEHE_MYSQL_PASSWORD"}
    env.update(XIEHE_MYSQL_PASSWORD_FILE=str(password_file), XIEHE_REDIS_URL=url)
    env.update(  # an off-site copy too: rclone is handed its keys by environment only
        XIEHE_OFFSITE=f"oss={s3_server.url('xiehe-secrets', 'p')}",
        XIEHE_OFFSITE_OSS_ACCESS_KEY_ID=S3Server.ACCESS_KEY,
        XIEHE_OFFSITE_OSS_SECRET_ACCESS_KEY=S3Server.SECRET_KEY,
    )
    secrets = [BACKUP_PASSWORD.encode(), REDIS_PASSWORD.encode(), S3Server.SECRET_KEY.encode()]
    worker = worker_factory(env)
    stop, found = threading.Event(), []
    watcher = threading.Thread(target=command_lines_with, args=(secrets, stop, found))
    watcher.start()
    try:
        proc = cli(env, "backup", "--reason", "secrets")
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    replicated = json.loads(cli(env, "show", last_line(proc), "--json").stdout)["offsite"]
    assert replicated["oss"]["status"] == "replicated"
    assert found == [], found
    for secret in secrets:
        assert secret.decode() not in proc.stdout + proc.stderr
        assert secret not in worker.logfile.read_bytes()
        for path in (tmp_path / "backups").rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), path
                assert secret.decode() not in path.name
        assert not [v for v in broker_values(broker.client()) if secret in v]
