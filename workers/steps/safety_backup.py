"""Before replacing anything, back up what is there now: a bad restore can itself be undone.

It is an ordinary backup (listed, verified, restorable) with reason `pre-restore ID`.
Whatever is gone (a dropped database, a removed volume: the disaster being recovered
from) is noted in it rather than failing it.
"""

from __future__ import annotations

from workers import workflows
from workers.context import StepContext
from workers.targets import mysql


def safety_backup(run: dict, ctx: StepContext) -> dict:
    settings = ctx.settings
    kinds = list(run["steps"]["preflight"]["result"]["kinds"])
    notes: dict[str, str] = {}
    databases: list[str] | None = None
    if "mysql" in kinds:
        present = mysql.check(settings.mysql)["databases"]
        wanted = list(settings.mysql.databases) or present
        databases = [d for d in wanted if d in present]
        notes |= {f"db:{d}": "missing at restore time" for d in wanted if d not in present}
        if not databases:
            kinds.remove("mysql")
    backup_id = workflows.reserve_id(ctx.broker)
    reason = f"pre-restore {run['backup_id']}"
    safety = workflows.new_backup_run(backup_id, kinds, notes, reason, offsite=False)
    safety.update(
        inherit_locks=True,
        locks=run["locks"],
        lock_owner=run["id"],
        tolerate_missing=True,
        databases=databases,
    )
    done = workflows.run_inline(safety)
    missing = done["steps"]["preflight"]["result"].get("missing_volumes", [])
    return {
        "safety_backup_id": backup_id,
        "kinds": kinds,
        "missing": sorted(notes) + [f"volume:{v}" for v in missing],
    }


def safety_id(run: dict) -> str | None:
    record = run["steps"].get("safety_backup") or {}
    return (record.get("result") or {}).get("safety_backup_id")
