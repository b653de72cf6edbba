"""`xiehe-backup events` as a real process: one backup and one reply per event, also
when the consumer is killed while the event's backup runs."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import base_env
from tests.support.servers import spawn, started, stop_group

STREAM, REPLIES = "xiehe:events", "xiehe:events:replies"


class EventsConsumer:
    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.logfile = logfile
        self.proc = spawn([sys.executable, "-m", "producers.cli.main", "events"], env, logfile)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.proc, sig)


@pytest.fixture
def consumers(tmp_path):
    yield from started(EventsConsumer, tmp_path, "events")


@pytest.fixture
def setup(tmp_path, redis_server):
    broker, target = redis_server(), redis_server()
    target.client().set("study:1", "x" * 4096)
    env = base_env(broker.url, tmp_path / "backups")
    env.update(XIEHE_REDIS_URL=target.url, XIEHE_EVENTS_CLAIM_IDLE_SECONDS="2")
    return broker.client(), env, tmp_path / "backups"


def replies(client) -> list[dict]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in client.xrange(REPLIES)
    ]


def wait_replies(client, count: int, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(replies(client)) < count and time.monotonic() < deadline:
        time.sleep(0.3)
    return replies(client)


def runs_of(backup_dir: Path, reason: str) -> list[dict]:
    found = [json.loads(p.read_text()) for p in (backup_dir / ".runs").glob("*.json")]
    return [r for r in found if r.get("reason") == reason]


def pending(client) -> int:
    return client.xpending(STREAM, "xiehe-backup")["pending"]


def test_migration_event_gets_one_backup_and_one_reply_junk_is_acked(
    setup, consumers, worker_factory
):
    client, env, backup_dir = setup
    worker_factory(env)
    consumers(env)
    client.xadd(STREAM, {"type": "user.login", "user": "42"})
    client.xadd(STREAM, {"type": "migration.pending"})  # no name: malformed
    event_id = client.xadd(STREAM, {"type": "migration.pending", "name": "0042_add_index"})

    [reply] = wait_replies(client, 1)
    time.sleep(2)  # a second reply would come now
    assert replies(client) == [reply]
    assert reply["type"] == "backup.completed"
    assert reply["correlation_id"] == event_id.decode()
    [run] = runs_of(backup_dir, "pre-migration 0042_add_index")
    assert run["id"] == reply["backup_id"] and run["status"] == "succeeded"
    manifest = json.loads((backup_dir / f"manifest_{run['id']}.json").read_text())
    assert manifest["status"] == "verified" and manifest["reason"] == "pre-migration 0042_add_index"
    assert pending(client) == 0, "every event, junk included, is acknowledged"


def test_event_survives_consumer_killed_while_its_backup_waits(setup, consumers, worker_factory):
    client, env, backup_dir = setup
    # appended while no consumer runs; no worker yet either, so the backup waits in the queue
    event_id = client.xadd(STREAM, {"type": "migration.pending", "name": "0043_split"})
    first = consumers(env)
    mapping = f"{STREAM}:backup:{event_id.decode()}"
    deadline = time.monotonic() + 30  # the mapping is reserved first, marked enqueued after
    while client.hget(mapping, "enqueued") != b"1" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.hget(mapping, "enqueued") == b"1"
    first.stop(signal.SIGKILL)  # dies with the event read, its backup queued, no reply sent
    assert pending(client) == 1

    consumers(env)  # takes the dead consumer's entry over after the idle time
    worker_factory(env)
    [reply] = wait_replies(client, 1)
    time.sleep(3)
    assert replies(client) == [reply]
    assert reply["type"] == "backup.completed" and reply["correlation_id"] == event_id.decode()
    runs = runs_of(backup_dir, "pre-migration 0043_split")
    assert [r["id"] for r in runs] == [reply["backup_id"]], "one backup, not one per consumer"
    assert pending(client) == 0


def test_failed_backup_replies_backup_failed_with_the_cause(setup, consumers, worker_factory):
    client, env, backup_dir = setup
    env = {
        **env,
        "XIEHE_MYSQL_HOST": "127.0.0.1",
        "XIEHE_MYSQL_PORT": "1",
        "XIEHE_MYSQL_USER": "root",
    }
    worker_factory(env)
    consumers(env)
    event_id = client.xadd(STREAM, {"type": "migration.pending", "name": "0044_drop"})
    [reply] = wait_replies(client, 1)
    assert reply["type"] == "backup.failed" and reply["correlation_id"] == event_id.decode()
    assert reply["backup_id"] and "mysql" in reply["cause"].lower()
    assert pending(client) == 0
