"""The end of a restore: locks freed, the restore time (RTO) and the way back on record."""

from __future__ import annotations

from workers.context import StepContext
from workers.steps.safety_backup import safety_id
from workers.store import locks


def report_restore(run: dict, ctx: StepContext) -> dict:
    locks.release(ctx.broker, run.pop("locks", None) or {})  # freed: never reclaimed
    durations = {name: rec.get("duration_s") for name, rec in run["steps"].items()}
    return {
        "backup_id": run["backup_id"],
        "safety_backup_id": safety_id(run),
        "rto_seconds": round(sum(d or 0 for d in durations.values()), 3),
        "durations": durations,
    }
