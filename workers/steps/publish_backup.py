"""Publish a verified backup: move artifacts into the tree, then backup_info, manifest last."""

from __future__ import annotations

import shutil

from workers.clock import now_iso
from workers.context import StepContext
from workers.policy.emptied import emptied
from workers.steps.staging import all_artifacts
from workers.store import atomic, locks
from workers.store import manifest as manifests


def publish_backup(run: dict, ctx: StepContext) -> dict:
    tree = ctx.tree
    staging = tree.staging(run["id"])
    artifacts = all_artifacts(run)
    for artifact in artifacts:
        atomic.move(staging / artifact["path"], tree.artifact_path(artifact))
    verification = run["steps"]["verify"]["result"]["checked"]
    manifest = manifests.build(run, artifacts, verification, now_iso())
    manifest["warnings"] = emptied(manifests.last_verified(tree), manifest)
    atomic.write_text(tree.backup_info(run["id"]), manifests.info_text(manifest))
    manifests.write(tree, manifest)  # the backup exists from this instant
    shutil.rmtree(staging, ignore_errors=True)
    if not run.get("inherit_locks"):
        locks.release(ctx.broker, run.pop("locks", None) or {})  # freed: never reclaimed
    return {
        "backup_id": run["id"],
        "size_bytes": manifest["size_bytes"],
        "published": len(artifacts),
        "warnings": manifest["warnings"],
    }
