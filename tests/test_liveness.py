"""Producers refuse a run no worker would take: real workers announce the queues they
consume (workers/liveness.py), and a worker stopped or killed is no longer counted."""

from __future__ import annotations

import time

from tests.support.cli import cli
from workers import liveness


def _wait_unserved(client, queue: str, within: float) -> float:
    start = time.monotonic()
    while liveness.unserved(client, [queue]) != [queue]:
        assert time.monotonic() - start < within, liveness.consumers(client, [queue])
        time.sleep(0.2)
    return time.monotonic() - start


def test_a_run_needs_a_worker_on_each_of_its_queues(stack, broker, worker_factory, tmp_path):
    """The shared queue's worker is up, the Docker host's is not: the backup (whose volume
    steps go to the Docker host's queue) is refused, naming that queue, and nothing is
    enqueued; with both up it runs."""
    _, env = stack
    env = {**env, "XIEHE_QUEUE": "xl-shared", "XIEHE_DOCKER_QUEUE": "xl-docker"}
    client = broker.client()
    shared = worker_factory(env, queues="xl-shared")
    heard = liveness.consumers(client, ["xl-shared", "xl-docker"])
    assert heard["xl-docker"] == []
    assert [name.split("@")[0] for name in heard["xl-shared"]] == [shared.name.split("@")[0]]
    proc = cli(env, "backup", timeout=60)
    assert proc.returncode == 1
    assert "no xiehe-backup worker is running on queue xl-docker" in proc.stderr, proc.stderr
    assert "-Q xl-docker" in proc.stderr and "nothing was enqueued" in proc.stderr
    assert client.llen("xl-shared") == 0 and client.llen("xl-docker") == 0
    assert not (tmp_path / "backups" / ".runs").exists() or not any(
        (tmp_path / "backups" / ".runs").iterdir()
    )
    worker_factory(env, queues="xl-docker")
    assert cli(env, "backup").returncode == 0


def test_a_stopped_worker_withdraws_and_a_killed_one_goes_stale(stack, broker, worker_factory):
    _, env = stack
    client = broker.client()
    stopped = worker_factory(env, queues="xl-stop")
    assert liveness.unserved(client, ["xl-stop"]) == []
    stopped.stop()
    assert liveness.unserved(client, ["xl-stop"]) == ["xl-stop"]  # at once

    killed = worker_factory(env, queues="xl-kill")
    assert liveness.unserved(client, ["xl-kill"]) == []
    killed.kill()  # SIGKILL: it cannot withdraw, its last announcement goes stale
    assert liveness.unserved(client, ["xl-kill"]) == []
    waited = _wait_unserved(client, "xl-kill", within=liveness.STALE + 3 * liveness.EVERY)
    assert waited >= liveness.STALE - 2 * liveness.EVERY, waited
    proc = cli({**env, "XIEHE_QUEUE": "xl-kill"}, "backup", "--only", "mysql", timeout=60)
    assert proc.returncode == 1
    assert "no xiehe-backup worker is running on queue xl-kill" in proc.stderr, proc.stderr


def test_staleness_is_judged_on_the_broker_clock(broker):
    """Scores are the broker's time, so a producer on a host whose clock is off by hours
    still sees a worker heard a second ago, and not one heard STALE seconds ago."""
    client = broker.client()
    now = client.time()
    server_now = now[0] + now[1] / 1e6
    client.zadd(liveness.key("xl-clock"), {"fresh@h": server_now - 1})
    assert liveness.consumers(client, ["xl-clock"]) == {"xl-clock": ["fresh@h"]}
    client.zadd(liveness.key("xl-clock"), {"fresh@h": server_now - liveness.STALE - 1})
    assert liveness.unserved(client, ["xl-clock"]) == ["xl-clock"]


def test_a_queue_dropped_at_runtime_is_withdrawn(stack, broker, worker_factory):
    """`celery control cancel_consumer`: the worker stops taking that queue, and says so
    at its next announcement; its other queue stays served."""
    from celery import Celery

    _, env = stack
    client = broker.client()
    worker_factory(env, queues="xl-keep,xl-drop")
    assert liveness.unserved(client, ["xl-keep", "xl-drop"]) == []
    (name,) = liveness.consumers(client, ["xl-drop"])["xl-drop"]
    control = Celery("xl-control", broker=broker.url)
    try:
        assert control.control.cancel_consumer("xl-drop", destination=[name], reply=True)
    finally:
        control.close()
    _wait_unserved(client, "xl-drop", within=3 * liveness.EVERY)
    assert liveness.unserved(client, ["xl-keep"]) == []
