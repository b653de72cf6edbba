"""The workflows: which steps, in which order.  The only place that knows the order.

A run is plain data: its id, what it covers, and its plan (the step names).  Each step
is a Celery task taking the run and returning it with the step's record added, so a
chain of them is the whole run and Flower shows every step as its own task.
"""

from __future__ import annotations

import time
from datetime import datetime

import redis
from celery import chain

from workers.config import Settings
from workers.ops.alerts import notify_result
from workers.ops.retention import prune_after_backup
from workers.steps import runner
from workers.steps.abandon_backup import abandon_backup
from workers.steps.archive_volumes import archive_volumes
from workers.steps.dump_mysql import dump_mysql
from workers.steps.preflight_backup import preflight_backup
from workers.steps.preflight_restore import preflight_restore
from workers.steps.publish_backup import publish_backup
from workers.steps.recover_restore import recover_restore
from workers.steps.replay_binlog import replay_binlog
from workers.steps.report_restore import report_restore
from workers.steps.restore_targets import restore_mysql, restore_redis, restore_volumes
from workers.steps.safety_backup import safety_backup
from workers.steps.services import start_services, stop_services
from workers.steps.snapshot_redis import snapshot_redis
from workers.steps.verify_backup import verify_staged
from workers.steps.verify_restore import verify_restore
from workers.store.layout import new_backup_id

# (step name, function, the kind it needs or None)
BACKUP_STEPS = (
    ("preflight", preflight_backup, None),
    ("dump_mysql", dump_mysql, "mysql"),
    ("snapshot_redis", snapshot_redis, "redis"),
    ("archive_volumes", archive_volumes, "volumes"),
    ("verify", verify_staged, None),
    ("publish", publish_backup, None),
    ("prune", prune_after_backup, None),  # retention after each backup; never fails it
    ("notify", notify_result, None),
)
# The seed plan's order: stop services, save what is there, restore, restart, verify.
RESTORE_STEPS = (
    ("preflight", preflight_restore, None),
    ("stop_services", stop_services, None),
    ("safety_backup", safety_backup, None),
    ("restore_mysql", restore_mysql, "mysql"),
    ("replay_binlog", replay_binlog, "pitr"),  # only in a point-in-time restore
    ("restore_redis", restore_redis, "redis"),
    ("restore_volumes", restore_volumes, "volumes"),
    ("start_services", start_services, None),
    ("verify", verify_restore, None),
    ("report", report_restore, None),
    ("notify", notify_result, None),
)
WORKFLOWS = {
    "backup": (BACKUP_STEPS, abandon_backup),
    "restore": (RESTORE_STEPS, recover_restore),
}


def plan(steps, kinds: list[str]) -> list[str]:
    return [name for name, _, kind in steps if kind is None or kind in kinds]


def reserve_id(broker: redis.Redis, prefix: str = "") -> str:
    """A new YYYYMMDD_HHMMSS id no other run has: two producers in one second get two."""
    while True:
        candidate = prefix + new_backup_id()
        if broker.set(f"xiehe:run-id:{candidate}", 1, nx=True, ex=7 * 24 * 3600):
            return candidate
        time.sleep(1.0 - (time.time() % 1.0) + 0.01)


def new_backup_run(backup_id: str, kinds: list[str], skipped: dict, reason: str) -> dict:
    return {
        "id": backup_id,
        "type": "backup",
        "kinds": kinds,
        "skipped": skipped,
        "reason": reason,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "plan": plan(BACKUP_STEPS, kinds),
        "steps": {},
        "status": "queued",
    }


def new_restore_run(
    run_id: str, backup_id: str, kinds: list[str], only: list[str], pitr: dict | None = None
) -> dict:
    """`pitr`: a point-in-time plan (workers/pitr.py), which adds the replay_binlog step."""
    return {
        "id": run_id,
        "type": "restore",
        "backup_id": backup_id,
        "kinds": kinds,
        "only": only,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "plan": plan(RESTORE_STEPS, [*kinds, "pitr"] if pitr else kinds),
        "pitr": pitr,
        "steps": {},
        "status": "queued",
    }


def run_inline(run: dict) -> dict:
    """Carry out a whole run in this process (a restore's safety backup, a drill)."""
    steps, on_failure = WORKFLOWS[run["type"]]
    functions = {name: fn for name, fn, _ in steps}
    for name in run["plan"]:
        run = runner.execute(name, functions[name], run, on_failure=on_failure)
    return run


# Steps that talk to the Docker engine run on the worker of the Docker host that holds the
# volumes (its own queue); database steps, verification and publishing on the shared queue.
DOCKER_STEPS = frozenset({"archive_volumes", "restore_volumes", "stop_services", "start_services"})
DOCKER_WHEN_USED = frozenset(
    {
        ("backup", "preflight"),
        ("restore", "preflight"),
        ("restore", "safety_backup"),
        ("restore", "verify"),
    }
)
REDIS_STEPS = frozenset({"snapshot_redis", "restore_redis"})


def queue_for(step: str, run: dict, settings: Settings) -> str:
    container_redis = bool(settings.redis and settings.redis.container)
    uses_docker = (
        "volumes" in run["kinds"]
        or container_redis
        or (run["type"] == "restore" and bool(settings.stop_containers))
    )
    docker = (
        step in DOCKER_STEPS
        or ((run["type"], step) in DOCKER_WHEN_USED and uses_docker)
        or (step in REDIS_STEPS and container_redis)
    )
    return settings.docker_queue if docker else settings.queue


def signature(run: dict, settings: Settings):
    """The Celery chain of a run: each step a task on its queue, the run passed along."""
    from workers import tasks

    steps = [
        tasks.task_for(run["type"], name).s().set(queue=queue_for(name, run, settings))
        for name in run["plan"]
    ]
    steps[0].args = (run,)
    return chain(*steps)
