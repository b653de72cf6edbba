"""Several hosts: volume steps run on the Docker host's worker, database steps on the shared
queue, so one broker drives workers on many hosts."""

from __future__ import annotations

import json

from tests.support.cli import cli, last_line


def test_steps_go_to_the_worker_of_their_queue(stack, worker_factory, tmp_path):
    st, env = stack
    env = {**env, "XIEHE_QUEUE": "xiehe-shared", "XIEHE_DOCKER_QUEUE": "xiehe-docker-host1"}
    # The shared worker cannot reach Docker at all: a volume step sent to it would fail.
    shared = worker_factory({**env, "DOCKER_HOST": "tcp://127.0.0.1:1"}, queues="xiehe-shared")
    docker_host = worker_factory(env, queues="xiehe-docker-host1")
    proc = cli(env, "backup")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "backups" / ".runs" / f"{last_line(proc)}.json").read_text())
    ran_on = {name: step["worker"] for name, step in run["steps"].items()}
    host1 = docker_host.name.replace("%h", "")
    shared_name = shared.name.replace("%h", "")
    assert ran_on["archive_volumes"].startswith(host1)
    assert ran_on["preflight"].startswith(host1)
    assert ran_on["dump_mysql"].startswith(shared_name)
    assert ran_on["snapshot_redis"].startswith(shared_name)
    assert ran_on["publish"].startswith(shared_name)
