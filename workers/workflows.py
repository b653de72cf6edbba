"""The workflows: which steps, in which order.  The only place that knows the order.

A run is plain data: its id, what it covers, and its plan (the step names).  Each step
is a Celery task taking the run and returning it with the step's record added, so a
chain of them is the whole run and Flower shows every step as its own task.  The capture
steps, each reading one target into its own artifacts, run side by side as one stage (a
Celery group, joined before verify): a backup takes about as long as its slowest target.
"""

from __future__ import annotations

import time
from datetime import datetime

import redis
from celery import chain, group

from workers.config import Settings
from workers.store.layout import new_backup_id

# (step name, the kind it needs or None).  The functions are bound in workers/tasks.py:
# this module stays light, so producers import it without loading every target's driver.
BACKUP_STEPS = (
    ("preflight", None),
    ("dump_mysql", "mysql"),
    ("snapshot_redis", "redis"),
    ("archive_volumes", "volumes"),
    ("verify", None),
    ("publish", None),
    ("replicate", "offsite"),  # off-site copies; never fails the backup
    ("prune", None),  # retention after each backup; never fails it
    ("notify", None),
)
# The seed plan's order: stop services, save what is there, restore, restart, verify.
RESTORE_STEPS = (
    ("fetch", "remote"),  # only in a restore --from a remote
    ("preflight", None),
    ("stop_services", None),
    ("safety_backup", None),
    ("restore_mysql", "mysql"),
    ("replay_binlog", "pitr"),  # only in a point-in-time restore
    ("restore_redis", "redis"),
    ("restore_volumes", "volumes"),
    ("start_services", None),
    ("verify", None),
    ("report", None),
    ("notify", None),
)
ORDER = {"backup": BACKUP_STEPS, "restore": RESTORE_STEPS}
# Steps that read one target each and write only their own files in the staging area:
# nothing orders them, so they share a stage.  Restores stay one step at a time (the seed
# plan's order, and a failure stops before the next target is touched).
CAPTURE_STEPS = frozenset({"dump_mysql", "snapshot_redis", "archive_volumes"})


def stages(plan: list[str]) -> list[list[str]]:
    """The plan cut into stages: consecutive capture steps share one, any other is alone."""
    cut: list[list[str]] = []
    for name in plan:
        if cut and name in CAPTURE_STEPS and cut[-1][0] in CAPTURE_STEPS:
            cut[-1].append(name)
        else:
            cut.append([name])
    return cut


def stage_of(plan: list[str], name: str) -> tuple[int, list[str]]:
    """(the index of the stage holding `name`, its steps); (-1, [name]) if not planned."""
    return next(((i, stage) for i, stage in enumerate(stages(plan)) if name in stage), (-1, [name]))


def plan(steps, kinds: list[str]) -> list[str]:
    return [name for name, kind in steps if kind is None or kind in kinds]


def reserve_id(broker: redis.Redis, prefix: str = "") -> str:
    """A new YYYYMMDD_HHMMSS id no other run has: two producers in one second get two."""
    while True:
        candidate = prefix + new_backup_id()
        if broker.set(f"xiehe:run-id:{candidate}", 1, nx=True, ex=7 * 24 * 3600):
            return candidate
        time.sleep(1.0 - (time.time() % 1.0) + 0.01)


def new_backup_run(
    backup_id: str, kinds: list[str], skipped: dict, reason: str, offsite: bool = True
) -> dict:
    """`offsite=False`: a backup that stays on this host (a restore's safety copy; the next
    run sends it).  Otherwise the replicate step copies it to the remotes the worker has
    (XIEHE_OFFSITE), or says none is configured."""
    return {
        "id": backup_id,
        "type": "backup",
        "kinds": kinds,
        "skipped": skipped,
        "reason": reason,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "plan": plan(BACKUP_STEPS, [*kinds, "offsite"] if offsite else kinds),
        "steps": {},
        "status": "queued",
    }


def new_restore_run(
    run_id: str,
    backup_id: str,
    kinds: list[str],
    only: list[str],
    pitr: dict | None = None,
    from_remote: str | None = None,
) -> dict:
    """`pitr`: a point-in-time plan (workers/pitr.py), which adds the replay_binlog step;
    `from_remote`: the off-site remote to fetch the backup from first (the fetch step)."""
    extra = ["pitr"] * bool(pitr) + ["remote"] * bool(from_remote)
    return {
        "id": run_id,
        "type": "restore",
        "backup_id": backup_id,
        "kinds": kinds,
        "only": only,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "plan": plan(RESTORE_STEPS, [*kinds, *extra]),
        "pitr": pitr,
        "from_remote": from_remote,
        "steps": {},
        "status": "queued",
    }


def run_inline(run: dict) -> dict:
    """Carry out a whole run in this process (a restore's safety backup, a drill)."""
    from workers.steps import runner
    from workers.tasks import ON_FAILURE, STEPS

    for name in run["plan"]:
        run = runner.execute(
            name, STEPS[run["type"]][name], run, on_failure=ON_FAILURE[run["type"]]
        )
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


def queues(run: dict, settings: Settings) -> list[str]:
    """The queues whose workers the run's steps need."""
    return sorted({queue_for(name, run, settings) for name in run["plan"]})


def signature(run: dict, settings: Settings):
    """The Celery chain of a run: each step a task on its queue, the run passed along; a
    stage of several steps is a group, whose copies of the run the next step joins."""
    from workers.celery import app

    def step(name: str):
        return app.signature(f"{run['type']}.{name}", queue=queue_for(name, run, settings))

    parts = [
        step(stage[0]) if len(stage) == 1 else group(*map(step, stage))
        for stage in stages(run["plan"])
    ]
    parts[0].args = (run,)  # the first stage is a preflight or a fetch: one step
    return chain(*parts)
