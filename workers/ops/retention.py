"""Prune: apply the retention policy to the published backups and delete the rest.

A deletion first moves the manifest out of the tree's namespace (into .pruning/, one
atomic rename), so a half-deleted backup never looks complete, then removes the
artifacts and the backup_info, then the tombstone.  A prune cut short is finished by
the next one.  A backup in use (verify, drill, restore) is kept this time.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import redis

from workers.config import Settings
from workers.context import StepContext
from workers.ops import inuse
from workers.ops import settings as ops_settings
from workers.policy.retention import decide
from workers.store import atomic, locks, parts
from workers.store import manifest as manifests
from workers.store.layout import Tree

TOMBSTONES = ".pruning"


def summary(manifest: dict) -> dict:
    return {
        "id": manifest["id"],
        "created_at": manifest["created_at"],
        "status": manifest.get("status", ""),
        "verified": manifest.get("status") == "verified",
        "reason": manifest.get("reason") or "",
        "pinned_until": manifest.get("pinned_until"),
        "size_bytes": manifest.get("size_bytes", 0),
    }


def _tombstone(tree: Tree, backup_id: str) -> Path:
    return tree.root / TOMBSTONES / f"{backup_id}.json"


def delete_backup(tree: Tree, backup_id: str) -> int:
    """Delete one backup, manifest first; returns the bytes freed."""
    stone = _tombstone(tree, backup_id)
    stone.parent.mkdir(mode=0o700, exist_ok=True)
    if tree.manifest(backup_id).exists():
        atomic.move(tree.manifest(backup_id), stone)  # from here on it is not a backup
    return _finish(tree, stone)


def _finish(tree: Tree, stone: Path) -> int:
    manifest = json.loads(stone.read_text())
    paths = {tree.artifact_path(a) for a in manifest.get("artifacts", [])}
    paths |= set(tree.files_of(manifest["id"]))  # backup_info, an index, any leftover
    freed = 0
    for path in paths:
        try:
            freed += parts.remove(path)
        except FileNotFoundError:
            continue
    for directory in {p.parent for p in paths} | {tree.root}:
        if directory.exists():
            atomic.fsync_path(directory)
    stone.unlink()
    return freed


def resume(tree: Tree) -> list[str]:
    """Finish the deletions a previous prune left halfway."""
    stones = sorted((tree.root / TOMBSTONES).glob("*.json"))
    for stone in stones:
        _finish(tree, stone)
    return [s.stem for s in stones]


def prune_with(
    settings: Settings, client: redis.Redis, dry_run: bool = False, now: datetime | None = None
) -> dict:
    tree = Tree(settings.backup_dir)
    policy = ops_settings.load().policy
    resumed = [] if dry_run else resume(tree)
    summaries = [summary(m) for m in manifests.read_all(tree)]
    decisions = decide(summaries, policy, now)
    sizes = {s["id"]: s["size_bytes"] for s in summaries}
    freed = 0
    for decision in decisions:
        if decision["keep"] or dry_run:
            continue
        claim = inuse.try_claim(client, decision["id"], "prune", settings.lock_ttl)
        if claim is None:
            holder = locks.holder(client, inuse.target(decision["id"]))
            decision.update(keep=True, rules=[f"in use by {holder or 'another run'}"])
            continue
        try:
            freed += delete_backup(tree, decision["id"])
        finally:
            locks.release(client, claim)
        decision["deleted"] = True
    doomed = [d for d in decisions if not d["keep"]]
    return {
        "dry_run": dry_run,
        "decisions": decisions,
        "deleted": [d["id"] for d in doomed if d.get("deleted")],
        "would_free_bytes": sum(sizes[d["id"]] for d in doomed),
        "freed_bytes": freed,
        "resumed": resumed,
    }


def prune(settings: Settings, dry_run: bool = False) -> dict:
    return prune_with(settings, inuse.broker(settings), dry_run)


def prune_after_backup(run: dict, ctx: StepContext) -> dict:
    """The backup workflow's last step.  The backup is published already: a failing
    prune is reported in the step's result, never as the backup's failure."""
    try:
        result = prune_with(ctx.settings, ctx.broker)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return {"error": f"retention did not run: {exc}"}
    return {k: result[k] for k in ("deleted", "freed_bytes", "resumed")}
