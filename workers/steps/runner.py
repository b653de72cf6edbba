"""Run one step of a run: record it, heartbeat its locks, publish progress, clean up on failure.

A step is a plain function `fn(run, ctx) -> dict`: the run (plain JSON data, never a
secret) in, the step's own result out.  This module is the only place that writes the
step's record into the run and the journal, so every step is traced the same way.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from socket import gethostname

import redis

from workers import config
from workers.clock import now_iso
from workers.context import StepContext
from workers.errors import BackupError, LockBusy
from workers.ops import alerts
from workers.progress import Progress
from workers.store import journal, locks

StepFn = Callable[[dict, StepContext], dict]


def held_locks(run: dict) -> dict:
    return run.get("locks") or {}


def execute(name: str, fn: StepFn, run: dict, task=None, on_failure: StepFn | None = None) -> dict:
    """Run `fn` as step `name` of `run` and return the run with the step's record added."""
    settings = config.load()
    broker = redis.Redis.from_url(settings.broker_url)
    ctx = StepContext(
        settings=settings, progress=Progress(broker, run["id"], name, task), broker=broker
    )
    run = {**run, "steps": dict(run.get("steps", {}))}
    order = run.get("plan", [])
    ctx.progress.begin(order.index(name) + 1 if name in order else 0, len(order))
    worker = task.request.hostname if task is not None and task.request.hostname else None
    record = {"status": "running", "started_at": now_iso(), "worker": worker or gethostname()}
    run["steps"][name] = record
    run["status"] = "running"
    ctx.tree.ensure()
    journal.save(ctx.tree, run)
    started = time.monotonic()
    try:
        with locks.heartbeat(broker, held_locks(run), settings.lock_ttl) as lost:
            result = fn(run, ctx)
        if lost:
            raise LockBusy(f"lost the lock on {', '.join(sorted(set(lost)))} during {name}")
    except Exception as exc:
        record.update(
            status="failed", error=_describe(exc), duration_s=_since(started), finished_at=now_iso()
        )
        run.update(status="failed", failed_step=name, error=record["error"])
        if on_failure:
            try:
                run["recovery"] = on_failure(run, ctx)
            except Exception as cleanup_exc:  # noqa: BLE001 - report both, keep the first cause
                run["recovery"] = {"error": _describe(cleanup_exc)}
        if not run.get("inherit_locks"):  # a nested run's locks are its parent's to free
            locks.release(broker, held_locks(run))
        journal.save(ctx.tree, run)
        alerts.notify_failure(run, ctx)  # never raises: an alert must not hide the cause
        ctx.progress.publish(
            status="failed", step=name, error=record["error"], recovery=_recovery_hint(run)
        )
        raise
    record.update(
        status="succeeded",
        result=result,
        duration_s=_since(started),
        finished_at=now_iso(),
        bytes=ctx.progress.bytes,
    )
    if order and name == order[-1]:
        run["status"] = "succeeded"
        run["finished_at"] = now_iso()
    journal.save(ctx.tree, run)
    if run["status"] == "succeeded":
        ctx.progress.publish(status="succeeded", step=name, result_id=run["id"])
    return run


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _recovery_hint(run: dict) -> str:
    recovery = run.get("recovery") or {}
    return recovery.get("hint", "") if isinstance(recovery, dict) else ""
