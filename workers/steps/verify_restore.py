"""After a restore: the targets hold what the backup recorded."""

from __future__ import annotations

from workers.context import StepContext
from workers.errors import BackupError
from workers.store import manifest as manifests
from workers.targets import mysql, redis, volumes

COUNTED = ("files", "dirs", "symlinks", "bytes")


def _result(run: dict, step: str) -> dict:
    return (run["steps"].get(step) or {}).get("result") or {}


def _mysql_mismatches(ctx: StepContext, manifest: dict, databases: list[str]) -> list[str]:
    recorded = (manifest.get("mysql") or {}).get("databases", {})
    problems = []
    for db in databases:
        want = recorded.get(db, {}).get("tables", {})
        have = mysql.checksums(ctx.settings.mysql, db)
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
    problems = []
    for name in names:
        want = manifest.get("volumes", {}).get(name, {})
        inventory = volumes.file_inventory(ctx.docker, name, ctx.settings.helper_image)
        have = {
            "files": sum(1 for e in inventory.values() if e["type"] == "file"),
            "dirs": sum(1 for e in inventory.values() if e["type"] == "dir"),
            "symlinks": sum(1 for e in inventory.values() if e["type"] == "symlink"),
            "bytes": sum(e.get("size", 0) for e in inventory.values() if e["type"] == "file"),
        }
        for key in COUNTED:
            if key in want and want[key] != have[key]:
                problems.append(f"volume:{name} {key}: backup {want[key]} now {have[key]}")
    return problems


def verify_restore(run: dict, ctx: StepContext) -> dict:
    manifest = manifests.read(ctx.tree, run["backup_id"])
    problems = _mysql_mismatches(ctx, manifest, _result(run, "restore_mysql").get("databases", []))
    problems += _redis_mismatches(ctx, _result(run, "restore_redis"))
    problems += _volume_mismatches(
        ctx, manifest, list(_result(run, "restore_volumes").get("volumes", {}))
    )
    if problems:
        raise BackupError("restored data differs from the backup: " + "; ".join(problems[:10]))
    rto = sum(rec.get("duration_s") or 0 for rec in run["steps"].values())
    return {"verified": True, "rto_seconds": round(rto, 3)}
