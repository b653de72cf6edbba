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

from workers.steps import runner
from workers.steps.abandon_backup import abandon_backup
from workers.steps.archive_volumes import archive_volumes
from workers.steps.dump_mysql import dump_mysql
from workers.steps.preflight_backup import preflight_backup
from workers.steps.publish_backup import publish_backup
from workers.steps.snapshot_redis import snapshot_redis
from workers.steps.verify_backup import verify_staged
from workers.store.layout import new_backup_id

# (step name, function, the kind it needs or None)
BACKUP_STEPS = (
    ("preflight", preflight_backup, None),
    ("dump_mysql", dump_mysql, "mysql"),
    ("snapshot_redis", snapshot_redis, "redis"),
    ("archive_volumes", archive_volumes, "volumes"),
    ("verify", verify_staged, None),
    ("publish", publish_backup, None),
)
WORKFLOWS = {"backup": (BACKUP_STEPS, abandon_backup)}


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


def run_inline(run: dict) -> dict:
    """Carry out a whole run in this process (a restore's safety backup, a drill)."""
    steps, on_failure = WORKFLOWS[run["type"]]
    functions = {name: fn for name, fn, _ in steps}
    for name in run["plan"]:
        run = runner.execute(name, functions[name], run, on_failure=on_failure)
    return run


def signature(run: dict):
    """The Celery chain of a run: each step a task, the run passed from one to the next."""
    from workers import tasks

    first, *rest = run["plan"]
    return chain(tasks.task_for(run["type"], first).s(run),
                 *(tasks.task_for(run["type"], name).s() for name in rest))
