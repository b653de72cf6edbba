"""Preflight of a backup: every target reachable, enough disk, a lock on every target.

Nothing is written before this step succeeds, so an unreachable target or a full disk
fails the run with no partial file anywhere.
"""

from __future__ import annotations

import json
import shutil

from workers.context import StepContext
from workers.errors import BackupError, TargetError
from workers.steps.targets_of import lock_targets
from workers.store import journal, locks, space
from workers.targets import mysql, redis, volumes


def preflight_backup(run: dict, ctx: StepContext) -> dict:
    settings, tree = ctx.settings, ctx.tree
    sweep_abandoned(ctx)
    wanted = run["kinds"]
    checks: dict[str, dict] = {}
    sources: dict[str, int] = {}
    missing: list[str] = []
    if "mysql" in wanted:
        checks["mysql"] = mysql.check(settings.mysql)
        sources["mysql"] = checks["mysql"].get("data_bytes", 0)
    if "redis" in wanted:
        checks["redis"] = redis.check(settings.redis)
        sources["redis"] = checks["redis"].get("used_memory", 0)
    present = []
    if "volumes" in wanted:
        for name in settings.volumes:
            try:
                info = volumes.check(ctx.docker, name)
            except TargetError:
                if not run.get("tolerate_missing"):
                    raise
                missing.append(name)  # the disaster a restore is recovering from
                continue
            present.append(name)
            checks[f"volume:{name}"] = info
            sources["volumes"] = sources.get("volumes", 0) + info.get("size_bytes", 0)
    previous = latest_manifest(tree)
    need = space.estimate(previous, sources)
    free = space.free_bytes(tree.root)
    if free - need < settings.reserve_bytes:
        raise BackupError(
            f"disk: {free // 2**20} MiB free in {tree.root}, the backup needs about "
            f"{need // 2**20} MiB and {settings.reserve_bytes // 2**20} MiB must stay free "
            "(XIEHE_DISK_RESERVE_MB); free space or prune old backups"
        )
    if not run.get("inherit_locks"):
        run["locks"] = lock_targets(ctx, run, wanted, present)
    return {
        "targets": {k: _public(v) for k, v in checks.items()},
        "volumes": present,
        "missing_volumes": missing,
        "estimate_bytes": need,
        "free_bytes": free,
    }


def _public(check: dict) -> dict:
    """What of a target check is worth recording (no URLs, which may hold passwords)."""
    return {k: v for k, v in check.items() if k not in ("url", "password")}


def latest_manifest(tree) -> dict | None:
    for backup_id in reversed(tree.manifest_ids()):
        try:
            return json.loads(tree.manifest(backup_id).read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None


def sweep_abandoned(ctx: StepContext) -> list[str]:
    """Remove the staging of runs that died (no lock held by them any more)."""
    tree, swept = ctx.tree, []
    live = {
        locks.holder(ctx.broker, key.decode()[len(locks.PREFIX) :])
        for key in ctx.broker.scan_iter(match=locks.PREFIX + "*")
    }
    for staging in (tree.root / ".staging").iterdir():
        record = journal.load(tree, staging.name) or {}
        if record.get("lock_owner", staging.name) in live:
            continue
        shutil.rmtree(staging, ignore_errors=True)
        if record.get("status") == "running":
            record.update(status="abandoned", error="the run stopped without finishing")
            journal.save(tree, record)
        swept.append(staging.name)
    return swept
