"""Run one step of a run: record it, heartbeat its locks, publish progress, clean up on failure.

A step is a plain function `fn(run, ctx) -> dict`: the run (plain JSON data, never a
secret) in, the step's own result out.  This module is the only place that writes the
step's record into the run and the journal, so every step is traced the same way.

While a step executes it holds its own lock (`run:ID:STEP`, heartbeated like the target
locks): a second delivery of the step (a duplicate, or a redelivery after its worker died)
waits for that lock, then runs only if the journal says the run still needs the step.  A
worker that died outright leaves the lock to expire; workers/reaper.py then ends the run.

Steps of one stage run side by side (workers/workflows.py).  One of them that fails only
records its failure and passes the run on: its siblings may still be writing into the
staging area, so the step that joins the stage cleans up, unlocks and reports, once.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
import traceback
from collections.abc import Callable
from socket import gethostname

import redis
from celery.exceptions import Ignore

from workers import config
from workers.clock import now_iso
from workers.context import StepContext
from workers.errors import BackupError, LockBusy
from workers.ops import alerts
from workers.progress import Progress
from workers.store import journal, locks
from workers.workflows import stage_of, stages

StepFn = Callable[[dict, StepContext], dict]
RUN_LOCK = "run:"
ENDED = journal.ENDED
log = logging.getLogger("xiehe.runner")


def held_locks(run: dict) -> dict:
    return run.get("locks") or {}


def run_lock(run_id: str, step: str) -> str:
    return f"{RUN_LOCK}{run_id}:{step}"


def running_steps(run: dict) -> list[str]:
    """The steps a run's journal says are executing: several in a stage, and some may go
    on after a sibling failed; none once the run is abandoned or over."""
    if run.get("status") not in ("running", "failed"):
        return []
    return [n for n, r in (run.get("steps") or {}).items() if r.get("status") == "running"]


def execute(
    name: str, fn: StepFn, run: dict | list[dict], task=None, on_failure: StepFn | None = None
) -> dict:
    """Run `fn` as step `name` of `run` and return the run with the step's record added.
    `run` is a list after a stage of side-by-side steps: their copies, joined here."""
    joined = isinstance(run, list)
    if joined:
        run = journal.join(run)
    settings = config.load()
    broker = _broker(settings.broker_url)
    ctx = StepContext(
        settings=settings, progress=Progress(broker, run["id"], name, task), broker=broker
    )
    if joined and run.get("status") in journal.FAILED:
        _end_stage(run, ctx, on_failure)
    if task is not None and _beside(run, name) and _failed_unended(ctx.tree, run["id"]):
        log.warning("run %s: step %s not run: a step beside it failed", run["id"], name)
        return run  # untouched: the join, which waits for every copy, ends the run
    run = {**run, "steps": dict(run.get("steps", {}))}
    mine = _claim(broker, ctx.tree, run, name, settings.lock_ttl)
    try:
        return _execute(name, fn, run, ctx, on_failure, mine)
    finally:
        locks.release(broker, mine)


@functools.cache
def _broker(url: str) -> redis.Redis:
    """One client per URL for the life of the process: its pool keeps the connection, which
    each step used to open anew (a connect and a handshake per step).  redis-py drops a
    pool's connections in a forked child, so a pool process never shares its parent's."""
    return redis.Redis.from_url(url)


def _beside(run: dict, name: str) -> bool:
    """Whether the step runs side by side with others (its failure is the join's to end)."""
    return len(stage_of(run.get("plan", []), name)[1]) > 1


def _failed_unended(tree, run_id: str) -> bool:
    """The journal says the run failed and nobody ended it yet (the join, or the reaper)."""
    recorded = journal.load(tree, run_id) or {}
    return recorded.get("status") in journal.FAILED and "recovery" not in recorded


def _end_stage(run: dict, ctx: StepContext, on_failure: StepFn | None) -> None:
    """A step of the stage just joined failed: end the run here, once, and stop the chain."""
    if _failed_unended(ctx.tree, run["id"]):  # not on a second delivery of the join
        _end_failed(run, ctx, on_failure)
    raise BackupError(f"the run failed in {run.get('failed_step')}: {run.get('error')}")


def _claim(broker: redis.Redis, tree, run: dict, name: str, ttl: int) -> dict:
    """Take the step's own lock; a delivery the run no longer needs is ignored (acked)."""
    try:
        mine = locks.acquire(broker, [run_lock(run["id"], name)], run["id"], ttl, wait=ttl + 1)
    except LockBusy:
        why = "it is executing on another worker"
    else:
        why = _not_needed(journal.load(tree, run["id"]) or {}, run, name)
        if not why:
            return mine
        locks.release(broker, mine)
    log.warning("run %s: step %s delivered again and ignored: %s", run["id"], name, why)
    raise Ignore(why)


def _not_needed(recorded: dict, run: dict, name: str) -> str:
    if recorded.get("status") in ENDED:
        return f"the run already {recorded['status']}"
    if recorded.get("steps", {}).get(name, {}).get("status") == "succeeded":
        return "the step already succeeded (its worker passed the run on)"
    order = run.get("plan", [])
    index, _ = stage_of(order, name)
    later = [step for stage in stages(order)[index + 1 :] for step in stage] if index >= 0 else []
    if any(step in recorded.get("steps", {}) for step in later):
        return "a later step of the run already started"
    return ""


def _execute(
    name: str, fn: StepFn, run: dict, ctx: StepContext, on_failure: StepFn | None, mine: dict
) -> dict:
    settings, broker = ctx.settings, ctx.broker
    order = run.get("plan", [])
    ctx.progress.begin(order.index(name) + 1 if name in order else 0, len(order))
    task = ctx.progress.task
    worker = task.request.hostname if task is not None and task.request.hostname else None
    record = {"status": "running", "started_at": now_iso(), "worker": worker or gethostname()}
    run["steps"][name] = record
    run["status"] = "running"
    ctx.tree.ensure()
    # Not made durable: lost with a crash, the step only looks not started yet, and its
    # message, delivered again, runs it (the end of each step is made durable below).
    journal.save(ctx.tree, run, durable=False)
    started = time.monotonic()
    try:
        # A step delivered late (its worker died) takes back its expired locks, or stops
        # here if another run took one meanwhile.
        _check(locks.reclaim(broker, held_locks(run), settings.lock_ttl), name)
        with locks.heartbeat(broker, {**held_locks(run), **mine}, settings.lock_ttl) as lost:
            result = fn(run, ctx)
        _check(lost, name)
    except Exception as exc:
        record.update(
            status="failed", error=_describe(exc), duration_s=_since(started), finished_at=now_iso()
        )
        run.update(status="failed", failed_step=name, error=record["error"])
        if ctx.progress.task is not None and _beside(run, name):
            log.error("run %s: step %s failed: %s", run["id"], name, record["error"])
            try:
                return journal.save(ctx.tree, run)  # the join ends the run: siblings write on
            except OSError:
                pass  # unrecorded, the join would not know: end the run now
        _end_failed(run, ctx, on_failure)
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


def _end_failed(run: dict, ctx: StepContext, on_failure: StepFn | None) -> None:
    """Clean up after a failed run, free its target locks, record and report it."""
    if on_failure:
        try:
            run["recovery"] = on_failure(run, ctx)
        except Exception as cleanup_exc:  # noqa: BLE001 - report both, keep the first cause
            run["recovery"] = {"error": _describe(cleanup_exc)}
    if not run.get("inherit_locks"):  # a nested run's locks are its parent's to free
        locks.release(ctx.broker, held_locks(run))
    try:
        run.update(journal.save(ctx.tree, run))
    except OSError as journal_exc:  # a full disk: the failure must still be reported
        run["error"] += f"; the run journal could not be written: {journal_exc.strerror}"
    alerts.notify_failure(run, ctx)  # never raises: an alert must not hide the cause
    ctx.progress.publish(
        status="failed", step=run["failed_step"], error=run["error"], recovery=_recovery_hint(run)
    )


def _check(lost: list[str], name: str) -> None:
    if lost:
        raise LockBusy(f"lost the lock on {', '.join(sorted(set(lost)))} during {name}")


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        root = config.load().backup_dir
        return f"disk full: no space left on the backup disk {root}; free space or prune"
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _recovery_hint(run: dict) -> str:
    recovery = run.get("recovery") or {}
    return recovery.get("hint", "") if isinstance(recovery, dict) else ""
