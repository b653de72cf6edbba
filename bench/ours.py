"""The child-process side of a measurement of our code (started by bench/run.py):

    python3 -m bench.ours CASE JSON_PARAMS

calls one of our target functions and prints its result as JSON.  It imports only what
that call needs (no Celery, no data generator, Docker only in container mode): the
peers it is compared with are native tools that start in a few milliseconds.  The result
also carries `warm_s`, the call alone, timed after those imports and after the Docker
client is made: what the step costs in a running worker, whose processes import
everything and make their engine client once.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from workers import memory

UNAVAILABLE = 3  # exit status when our function does not exist yet


def _mysql_settings(params: dict):
    from workers.config import MySQLSettings

    return MySQLSettings(
        host=params["host"],
        port=params["port"],
        user=params["user"],
        password=os.environ.get("XIEHE_MYSQL_PASSWORD", ""),
        databases=(params["db"],),
        system_db="medical_system",
        parallel=params["parallel"],
    )


def _codec():
    from workers.store.codec import Codec

    return Codec("zstd")  # the product's default level


def _docker():
    """The engine client a step gets: made once per worker process, pinged per step."""
    from workers.targets import docker_engine

    return docker_engine.client()


def _mysql_dump(p: dict) -> dict:
    from workers.targets import mysql

    result = mysql.dump(_mysql_settings(p), Path(p["out"]), p["id"], _codec(), lambda n: None)
    return {"artifacts": result["artifacts"]}


def _mysql_restore(p: dict) -> dict:
    from workers.targets import mysql

    mysql.restore(_mysql_settings(p), Path(p["artifact"]), p["into"], None, lambda n: None)
    return {}


def _redis_snapshot(p: dict) -> dict:
    from workers.config import RedisSettings
    from workers.targets import redis as redis_target

    settings = RedisSettings(url=p["url"], container=p.get("container"))
    engine = _docker() if settings.container else None
    result = redis_target.snapshot(
        settings, engine, Path(p["out"]), p["id"], _codec(), lambda n: None
    )
    return {"artifacts": result["artifacts"], "mode": result["mode"], "read": result["read"]}


def _volume_archive(p: dict) -> dict:
    from workers.targets import volumes

    previous = Path(p["previous"]) if p.get("previous") else None
    result = volumes.archive(
        _docker(), p["volume"], p["image"], Path(p["out"]), p["id"], _codec(), previous=previous
    )
    return {k: v for k, v in result.items() if k != "manifest_sha256"}


def _volume_restore(p: dict) -> dict:
    from workers.targets import volumes

    return volumes.restore(_docker(), p["volume"], Path(p["artifact"]), p["image"])


def _warm_producer() -> None:
    """What a resident producer has done before: sent a message (the broker transport
    and the result backend are loaded on first use)."""
    from workers.celery import app

    with app.producer_or_acquire():  # the transport, as loaded by the first message sent
        pass
    app.backend  # noqa: B018 - loads the backend, as the first message sent did


def _backup_queued(p: dict) -> dict:
    """A backup enqueued and awaited by a process already up, as the backend's migration
    gate (producers.client) and the beat schedule enqueue theirs: no interpreter start."""
    from producers import runs
    from producers.cli import common
    from workers import workflows

    settings = common.settings()
    run = runs.start_backup(settings, "bench", only=p["only"])
    backup_id = run["id"]
    state = runs.wait(common.broker(settings), backup_id, 3600, workflows.queues(run, settings))
    if not state or state.get("status") != "succeeded":
        raise SystemExit(f"backup {backup_id} did not succeed: {state}")
    return {"id": backup_id}


# case -> (the module it measures, the call)
CASES = {
    "mysql-dump": ("workers.targets.mysql", _mysql_dump),
    "mysql-restore": ("workers.targets.mysql", _mysql_restore),
    "redis-snapshot": ("workers.targets.redis", _redis_snapshot),
    "volume-archive": ("workers.targets.volumes", _volume_archive),
    "volume-restore": ("workers.targets.volumes", _volume_restore),
    "backup-queued": ("producers.runs", _backup_queued),
}


def main(case: str, params: dict) -> int:
    module, call = CASES[case]
    memory.configure()  # as each worker process does when it starts
    try:
        importlib.import_module(module)
        if case.startswith("volume-") or params.get("container"):
            _docker()  # a running worker's process has its client already
        if case == "backup-queued":
            _warm_producer()
        waited = 0.0
        if params.get("start_phase") is not None:  # start at this fraction of a second
            waited = (params["start_phase"] - time.time()) % 1.0
            time.sleep(waited)
        start = time.perf_counter()
        result = call(params)
    except (ImportError, AttributeError) as exc:
        print(f"{type(exc).__name__}: {exc}")
        return UNAVAILABLE
    result["warm_s"] = round(time.perf_counter() - start, 4)
    result["waited_s"] = round(waited, 4)  # not part of the measurement
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2])))
