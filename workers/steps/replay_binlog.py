"""After restore_mysql of a point-in-time restore: replay the archived binlog to the target.

The loaded databases are first compared with the backup (verify_restore cannot: after the
replay they hold more than the backup), then each database gets the archived events from
the backup's position to the plan's stop (run["pitr"], made by workers/pitr.py).
"""

from __future__ import annotations

from workers.context import StepContext
from workers.errors import BackupError
from workers.steps.verify_restore import mysql_mismatches
from workers.store import manifest as manifests
from workers.targets import binlog, mysql


def replay_binlog(run: dict, ctx: StepContext) -> dict:
    plan = run["pitr"]
    databases = run["steps"]["restore_mysql"]["result"]["databases"]
    manifest = manifests.read(ctx.tree, run["backup_id"])
    problems = mysql_mismatches(ctx, manifest, databases)
    if problems:
        raise BackupError("the loaded backup differs from its record: " + "; ".join(problems[:10]))
    directory = ctx.settings.backup_dir / "binlog"
    files = [directory / name for name in plan["files"]]
    missing = [p.name for p in files if not p.exists()]
    if missing:
        raise BackupError(f"archived binlog file(s) gone since the plan: {', '.join(missing)}")
    start, stop = plan["start"], plan["stop"]
    empty = stop and stop["file"] == start["file"] and stop["position"] <= start["position"]
    applied = 0
    for db in [] if empty else databases:
        applied += binlog.replay(
            ctx.settings.mysql,
            files,
            start["position"],
            stop["position"] if stop else None,
            db,
            ctx.progress.add,
        )
    rows = {
        db: {t: c["rows"] for t, c in mysql.checksums(ctx.settings.mysql, db).items()}
        for db in databases
    }
    return {"databases": databases, "sql_bytes": applied, "stop": stop, "rows": rows}
