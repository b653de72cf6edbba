"""Hostile input: junk on the backend's event stream and odd CLI arguments.

The events consumer logs and acknowledges what it cannot use and keeps running (a valid
event after the junk is still served); the CLI answers odd arguments with a one-line
error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import base_env
from tests.test_events import REPLIES, STREAM, consumers  # noqa: F401 - fixture
from workers.store.layout import Tree

GROUP = "xiehe-backup"


@pytest.fixture
def events_setup(tmp_path, redis_server, worker_factory):
    broker, target = redis_server(), redis_server()
    target.client().set("study:1", "x" * 4096)
    env = base_env(broker.url, tmp_path / "backups")
    env.update(XIEHE_REDIS_URL=target.url, XIEHE_EVENTS_CLAIM_IDLE_SECONDS="2")
    worker_factory(env)
    return broker.client(), env


def test_junk_events_are_logged_acked_and_the_consumer_keeps_running(
    events_setup,
    consumers,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    client, env = events_setup
    junk = [
        {"type": "migration.pending"},  # no name
        {"type": "migration.pending", "name": "x" * 1_000_000},  # a 1 MB field
        {"type": "user.deleted", "name": "n"},  # unknown type
        {"type": "y" * 1_000_000},  # an oversized unknown type
        {"nothing": "here"},
        {"type": b"\xff\xfe\x00", "name": b"\xc3\x28"},  # not UTF-8
        {"type": "migration.pending", "name": "bad\nname\x00"},
    ]
    ids = [client.xadd(STREAM, fields).decode() for fields in junk]
    consumer = consumers(env)
    good_id = client.xadd(STREAM, {"type": "migration.pending", "name": "0042_add_index"})
    deadline = time.monotonic() + 120
    while not client.xlen(REPLIES) and time.monotonic() < deadline:
        assert consumer.proc.poll() is None, consumer.logfile.read_text()[-3000:]
        time.sleep(0.5)
    replies = client.xrange(REPLIES)
    assert len(replies) == 1, replies
    fields = {k.decode(): v.decode() for k, v in replies[0][1].items()}
    assert fields["correlation_id"] == good_id.decode()
    assert fields["type"] == "backup.completed", fields
    assert consumer.proc.poll() is None, "the consumer stopped"
    assert client.xpending(STREAM, GROUP)["pending"] == 0  # every entry acknowledged
    log = consumer.logfile.read_text()
    assert "Traceback" not in log
    for event_id in ids:
        assert f"event {event_id} ignored" in log, event_id
    assert len(max(log.splitlines(), key=len)) < 2000  # the 1 MB field is not echoed


def run_cli(env: dict, *args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "producers.cli.main", *args],
        env=env,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["backup", "--only", "foo"],
        ["show", "../../etc/passwd"],
        ["verify", "../20240101_000000"],
        ["restore", "../x", "--yes"],
        ["show", "1" * 10_000],
        ["verify", "a" * 10_000],
        ["restore", "9" * 10_000, "--yes"],
        ["show", os.fsdecode(b"\xff\xfe20240101")],
        [os.fsdecode(b"\xff")],
        ["backup", "--only", "mysql", "--reason", "x" * 10_000, "--bogus"],
    ],
    ids=lambda a: " ".join(a)[:30],
)
def test_odd_cli_arguments_fail_in_one_line(args, broker, tmp_path):
    env = base_env(broker.url, tmp_path / "backups")
    env["XIEHE_MYSQL_HOST"], env["XIEHE_MYSQL_USER"] = "127.0.0.1", "root"
    Tree(tmp_path / "backups").ensure()
    proc = run_cli(env, *args)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("xiehe-backup"), err[-2000:]
    assert len(lines) <= 2, err[-2000:]  # argparse prints its usage line first
    assert not list((tmp_path / "backups").glob("*/*"))  # nothing written anywhere
