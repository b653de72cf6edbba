"""Runs whose worker died: found by the silence of their lock, ended, cleaned up, reported.

A step holds its own lock (`run:ID:STEP`) and heartbeats it.  A worker killed outright
(SIGKILL, out of memory, power loss) stops heartbeating and the lock expires after
XIEHE_LOCK_TTL, but the broker keeps the step's message unacknowledged until the
visibility timeout (hours: a long dump must never run twice), so nothing else would end
the run.  Every worker sweeps the journal: a run whose steps recorded `running` all left
their locks absent for a whole TTL is marked `abandoned` with its step and cause, its staging
and half-published files are removed, its target locks freed and its failure published,
so the CLI, the events consumer and the alerts learn it at once.  When the message comes
back after the visibility timeout, the runner ignores it (the run has ended).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from workers import config
from workers.clock import now_iso
from workers.config import Settings
from workers.context import StepContext
from workers.errors import LockBusy
from workers.ops import alerts
from workers.progress import Progress
from workers.steps.abandon_backup import abandon_backup
from workers.steps.runner import run_lock, running_steps
from workers.store import journal, locks
from workers.store.layout import Tree

log = logging.getLogger("xiehe.reaper")
CLEANUP = {"backup": abandon_backup}  # a restore's state is for an operator to judge


class Reaper:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tree = Tree(settings.backup_dir)
        self.broker = redis.Redis.from_url(settings.broker_url, socket_timeout=30)
        self.silent_since: dict[str, float] = {}  # run id -> when its lock was first missing

    def sweep(self) -> list[str]:
        """End every run whose step lost its worker; return their ids."""
        reaped, now = [], time.monotonic()
        for run in journal.all_runs(self.tree):
            steps = running_steps(run)
            if not steps or any(locks.holder(self.broker, run_lock(run["id"], s)) for s in steps):
                self.silent_since.pop(run["id"], None)
                continue
            # A whole TTL of silence: a live step re-takes a lock lost in a broker restart
            # within TTL/3, so only a dead one stays silent that long.
            silent = now - self.silent_since.setdefault(run["id"], now)
            if silent >= self.settings.lock_ttl and self.reap(run["id"]):
                reaped.append(run["id"])
        return reaped

    def reap(self, run_id: str) -> bool:
        run = journal.load(self.tree, run_id) or {}
        steps = running_steps(run)
        try:  # the steps' own locks: none can be delivered again while we end the run
            mine = locks.acquire(
                self.broker, [run_lock(run_id, s) for s in steps], "reaper", 60, wait=0
            )
        except LockBusy:
            return False
        try:
            run = journal.load(self.tree, run_id) or {}
            if not steps or running_steps(run) != steps:
                return False
            self._abandon(run, steps)
            return True
        finally:
            locks.release(self.broker, mine)
            self.silent_since.pop(run_id, None)

    def _abandon(self, run: dict, steps: list[str]) -> None:
        step, also = steps[0], f" (and {', '.join(steps[1:])})" if steps[1:] else ""
        error = (
            f"the worker executing step {step} stopped{also} (killed, out of memory or host "
            f"lost): no heartbeat for XIEHE_LOCK_TTL={self.settings.lock_ttl}s; run abandoned"
        )
        for name in steps:
            run["steps"][name].update(status="failed", error=error, finished_at=now_iso())
        if run.get("status") != "failed":  # else a sibling's failure stays the cause
            run.update(status="abandoned", failed_step=step, error=error)
        run["finished_at"] = now_iso()
        progress = Progress(self.broker, run["id"], step)
        ctx = StepContext(self.settings, progress, self.broker)
        cleanup = CLEANUP.get(run.get("type", ""))
        if cleanup:
            run["recovery"] = cleanup(run, ctx)
        if not run.get("inherit_locks"):
            locks.release(self.broker, run.get("locks") or {})
        journal.save(self.tree, run)
        alerts.notify_failure(run, ctx)
        progress.publish(status="failed", step=run["failed_step"], error=run["error"])
        log.error("run %s abandoned: %s", run["id"], error)


def _loop(reaper: Reaper, every: float) -> None:
    while True:
        try:
            reaper.sweep()
        except redis.RedisError as exc:  # a broker restart: the next sweep retries
            log.warning("reaper: broker unreachable (%s)", exc)
        except Exception:  # a bad journal must not stop the sweeps
            log.exception("reaper: sweep failed")
        time.sleep(every)


def start() -> threading.Thread | None:
    """Sweep every TTL/3 seconds in a daemon thread of this (the worker's main) process."""
    try:
        settings = config.load()
    except config.ConfigError as exc:
        log.error("reaper not started: %s", exc)
        return None
    reaper = Reaper(settings)
    thread = threading.Thread(
        target=_loop, args=(reaper, settings.lock_ttl / 3), daemon=True, name="run-reaper"
    )
    thread.start()
    return thread
