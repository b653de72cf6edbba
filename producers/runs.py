"""Start a backup run and wait for its end: the one path shared by every producer.

The CLI's backup verb, the beat schedule, the backend events consumer and the migration
gate all go through here, so a backup started by any of them is the same run.
"""

from __future__ import annotations

import time

import redis

from producers.cli import common
from workers import workflows
from workers.config import Settings
from workers.errors import BackupError
from workers.progress import ENDED, EndSignal
from workers.progress import read as read_progress

KINDS = ("mysql", "redis", "volumes")
HOW_TO_SET = {
    "mysql": "XIEHE_MYSQL_HOST is not set",
    "redis": "XIEHE_REDIS_URL is not set",
    "volumes": "XIEHE_VOLUMES is not set",
}
POLL = 0.1  # s between reads of the run's progress record


def select_kinds(settings: Settings, only: str) -> tuple[list[str], dict[str, str]]:
    """The kinds this backup covers, and why each other kind is skipped."""
    asked = [k.strip() for k in only.split(",") if k.strip()] or list(KINDS)
    unknown = [k for k in asked if k not in KINDS]
    if unknown:
        raise BackupError(f"--only: unknown kind {', '.join(unknown)} (use {', '.join(KINDS)})")
    configured = settings.kinds()
    skipped = {k: HOW_TO_SET[k] for k in KINDS if k in asked and k not in configured}
    skipped |= {k: "not selected by --only" for k in KINDS if k not in asked}
    kinds = [k for k in KINDS if k in asked and k in configured]
    if not kinds:
        raise BackupError(
            "nothing to back up: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return kinds, skipped


def enqueue(
    settings: Settings,
    kinds: list[str],
    skipped: dict,
    reason: str,
    check_worker: bool = True,
    backup_id: str | None = None,
) -> dict:
    """Enqueue a backup run; return it.  `backup_id` re-enqueues a reserved id."""
    client = common.broker(settings)
    backup_id = backup_id or workflows.reserve_id(client)
    run = workflows.new_backup_run(backup_id, kinds, skipped, reason)
    if check_worker:
        common.require_worker(client, workflows.queues(run, settings))
    workflows.signature(run, settings).apply_async()
    return run


def start_backup(
    settings: Settings, reason: str, only: str = "", check_worker: bool = True
) -> dict:
    """Select the configured kinds and enqueue a full backup; return the run."""
    kinds, skipped = select_kinds(settings, only)
    return enqueue(settings, kinds, skipped, reason, check_worker)


def outcome(client: redis.Redis, run_id: str) -> dict | None:
    """The run's final progress record (status succeeded|failed, error), or None if running."""
    state = read_progress(client, run_id)
    return state if state.get("status") in ENDED else None


def wait(client: redis.Redis, run_id: str, timeout: float, queues: list[str]) -> dict | None:
    """Wait for the run to end; its final record, or None when `timeout` seconds passed.
    BackupError when a queue of the run (`queues`) has no worker left (common.Watchdog)."""
    deadline = time.monotonic() + timeout
    ending = EndSignal(client, run_id)
    watchdog = common.Watchdog(client, run_id, queues)
    try:
        while True:
            state = read_progress(client, run_id)
            if state.get("status") in ENDED:
                return state
            if time.monotonic() >= deadline:
                return None
            watchdog.check(state)
            ending.wait(min(POLL, max(deadline - time.monotonic(), 0.01)))
    finally:
        ending.close()
