"""After a restore: the targets hold what the backup recorded."""

from __future__ import annotations

from workers.context import StepContext
from workers.errors import BackupError
from workers.store import manifest as manifests
from workers.targets import mysql, redis, volumes


def _result(run: dict, step: str) -> dict:
    return (run["steps"].get(step) or {}).get("result") or {}


def mysql_mismatches(ctx: StepContext, manifest: dict, databases: list[str]) -> list[str]:
    recorded = (manifest.get("mysql") or {}).get("databases", {})
    problems = []
    for db in databases:
        want = recorded.get(db, {}).get("tables", {})
        have = mysql.checksums(ctx.settings.mysql, db, recorded.get(db, {}).get("rendering", 1))
        for table in sorted(set(want) | set(have)):
            if want.get(table) != have.get(table):
                problems.append(
                    f"db:{db} table {table}: backup {want.get(table)} now {have.get(table)}"
                )
    return problems


def _redis_mismatches(ctx: StepContext, loaded: dict) -> list[str]:
    if not loaded:
        return []
    have = {str(k): v for k, v in redis.check(ctx.settings.redis)["keys"].items()}
    want = {str(k): v for k, v in (loaded.get("keys") or {}).items()}
    return [] if have == want else [f"redis keys per db: restored {want}, found {have}"]


def _volume_mismatches(ctx: StepContext, manifest: dict, names: list[str]) -> list[str]:
    """Every file's path, type, mode, owner, size and content hash, as one digest."""
    problems = []
    for name in names:
        want = manifest.get("volumes", {}).get(name, {}).get("manifest_sha256")
        inventory = volumes.file_inventory(ctx.docker, name, ctx.settings.helper_image)
        if want != volumes.manifest_sha256(inventory):
            problems.append(f"volume:{name}: its files differ from the backup's")
    return problems


def verify_restore(run: dict, ctx: StepContext) -> dict:
    manifest = manifests.read(ctx.tree, run["backup_id"])
    databases = _result(run, "restore_mysql").get("databases", [])
    if run.get("pitr"):  # replayed past the backup: replay_binlog compared the load before
        databases = []
    problems = mysql_mismatches(ctx, manifest, databases)
    problems += _redis_mismatches(ctx, _result(run, "restore_redis"))
    problems += _volume_mismatches(
        ctx, manifest, list(_result(run, "restore_volumes").get("volumes", {}))
    )
    if problems:
        raise BackupError("restored data differs from the backup: " + "; ".join(problems[:10]))
    rto = sum(rec.get("duration_s") or 0 for rec in run["steps"].values())
    return {"verified": True, "rto_seconds": round(rto, 3)}
