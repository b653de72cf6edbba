"""`xiehe-backup status`: current and recent runs with every step's state, duration and
progress, from the run journals and the broker's progress hash; `status RUN_ID`."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

from tests.conftest import base_env
from tests.support.cli import cli
from workers import config
from workers.progress import EndSignal, Progress
from workers.steps.targets_of import redis_lock
from workers.store import journal, locks
from workers.store.layout import Tree


def status(env: dict, *args: str) -> dict:
    proc = cli(env, "status", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(fn, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (result := fn()):
        assert time.monotonic() < deadline, what
        time.sleep(0.3)
    return result


def steps_of(view: dict) -> dict[str, dict]:
    return {s["name"]: s for s in view["steps"]}


def test_a_waiting_run_then_its_recent_record(stack, worker_factory, broker):
    """A backup waits in preflight for a lock another run holds: status shows it running
    there; once it ends, it is among the recent runs with every step's duration."""
    _, env = stack
    worker = worker_factory(env)
    heard = status(env)["workers"]
    assert [name.split("@")[0] for name in heard["xiehe-backup"]] == [worker.name.split("@")[0]]
    held = locks.acquire(
        broker.client(), [redis_lock(config.load(env))], "xt-holder", ttl=120, wait=0
    )
    try:
        proc = cli({**env, "XIEHE_LOCK_WAIT": "120"}, "backup", "--only", "redis", "--detach")
        assert proc.returncode == 0, proc.stderr
        run_id = proc.stdout.strip()

        def running() -> dict | None:
            views = [v for v in status(env)["running"] if v["id"] == run_id]
            return (
                views[0]
                if views and steps_of(views[0])["preflight"]["status"] == "running"
                else None
            )

        view = wait_for(running, "the run never showed as running in preflight")
        rows = steps_of(view)
        plan = ["preflight", "snapshot_redis", "verify", "publish", "replicate", "prune", "notify"]
        assert list(rows) == plan
        assert rows["preflight"]["duration_s"] >= 0
        assert {rows[n]["status"] for n in list(rows)[1:]} == {"pending"}
        text = cli(env, "status").stdout
        assert "running runs:" in text and f"backup {run_id} running" in text
        assert "preflight          running" in text
    finally:
        locks.release(broker.client(), held)

    wait_for(lambda: status(env, run_id)["status"] == "succeeded", "the run did not finish")
    result = status(env)
    assert result["running"] == [] and result["last_good_backup"] == run_id
    [recent] = [v for v in result["recent"] if v["id"] == run_id]
    assert all(s["status"] == "succeeded" for s in recent["steps"])
    assert all(isinstance(s["duration_s"], float) for s in recent["steps"])
    assert steps_of(recent)["preflight"]["duration_s"] > 0.5  # it waited for the lock
    text = cli(env, "status", run_id).stdout
    assert text.startswith(f"backup {run_id} succeeded")
    assert "snapshot_redis     succeeded" in text


def test_a_running_steps_bytes_and_rate_come_from_the_broker(broker, tmp_path):
    env = base_env(broker.url, tmp_path / "backups")
    tree = Tree(tmp_path / "backups")
    tree.ensure()
    run_id = "20240601_020000"
    started = (datetime.now(UTC) - timedelta(seconds=90)).isoformat()
    journal.save(
        tree,
        {
            "id": run_id,
            "type": "backup",
            "status": "running",
            "reason": "test",
            "plan": ["preflight", "dump_mysql", "verify"],
            "steps": {
                "preflight": {"status": "succeeded", "duration_s": 1.5},
                "dump_mysql": {"status": "running", "started_at": started},
            },
        },
    )
    meter = Progress(broker.client(), run_id, "dump_mysql")
    meter.begin(2, 3)
    meter.publish(step="dump_mysql", bytes=300 * 2**20, rate=5 * 2**20)

    rows = steps_of(status(env, run_id))
    assert rows["preflight"] == {"name": "preflight", "status": "succeeded", "duration_s": 1.5}
    assert rows["dump_mysql"]["bytes"] == 300 * 2**20 and rows["dump_mysql"]["rate"] == 5 * 2**20
    assert 89 <= rows["dump_mysql"]["duration_s"] < 150
    assert rows["verify"]["status"] == "pending"
    text = cli(env, "status", run_id).stdout
    assert "dump_mysql         running" in text and "300.0 MiB at 5.0 MiB/s" in text

    unknown = cli(env, "status", "20990101_000000")
    assert unknown.returncode == 1 and "no run 20990101_000000" in unknown.stderr


def test_a_follower_is_woken_by_the_end_of_the_run(broker):
    """The end is published as well as written: a follower's pause ends with it (a pause
    that only timed out returns False), and a pause with no end times out."""
    client = broker.client()
    ending = EndSignal(client, "20991231_000001")
    try:
        assert ending.wait(0.2) is False  # nothing ended
        end = threading.Timer(
            0.5, lambda: Progress(client, "20991231_000001", "notify").publish(status="succeeded")
        )
        end.start()
        assert ending.wait(120) is True
        end.join()
        assert client.hget("xiehe:run:20991231_000001", "status") == b"succeeded"
    finally:
        ending.close()
