"""`verify`: re-check published backups and record the outcome in their manifests.

Every artifact is checked (not only up to the first defect) so the record names them all.
A backup that fails is marked "failed-verification": `list` shows it and retention never
counts it as a good one; one that passes again is marked "verified" again.
"""

from __future__ import annotations

from pathlib import Path

from workers.clock import now_iso
from workers.config import Settings
from workers.errors import NotFound
from workers.ops import inuse
from workers.steps.verify_backup import verify_artifact
from workers.store import manifest as manifests
from workers.store.codec import CorruptArtifact
from workers.store.layout import Tree, is_backup_id

VERIFIED, FAILED = "verified", "failed-verification"


def check_artifacts(tree: Tree, artifacts: list[dict], identity: Path | None) -> tuple[list, list]:
    """(results of the good artifacts, defects of the bad ones)."""
    checked, defects = [], []
    for artifact in artifacts:
        try:
            checked.append(verify_artifact(tree.artifact_path(artifact), artifact, identity))
        except CorruptArtifact as exc:
            defects.append(str(exc))
    return checked, defects


def verify_one(settings: Settings, tree: Tree, backup_id: str) -> dict:
    manifest = manifests.read(tree, backup_id)
    checked, defects = check_artifacts(tree, manifest["artifacts"], settings.age_identity_file)
    record = {"at": now_iso(), "ok": not defects, "artifacts": checked}
    if defects:
        record["cause"] = "; ".join(defects)
    manifests.update(tree, backup_id, status=FAILED if defects else VERIFIED, verification=record)
    return {"id": backup_id, "ok": not defects, "cause": record.get("cause", "")}


def verify_backups(settings: Settings, ids: list[str] | None = None) -> dict:
    """Verify the given backups (all when `ids` is None): {checked: [...], failed: [ids]}."""
    tree = Tree(settings.backup_dir)
    wanted = tree.manifest_ids() if ids is None else ids
    for backup_id in wanted:  # unknown ids fail before anything is read
        if not is_backup_id(backup_id) or not tree.manifest(backup_id).exists():
            raise NotFound(manifests.unknown_id_message(tree, backup_id))
    client = inuse.broker(settings)
    results = []
    for backup_id in wanted:
        with inuse.using(client, backup_id, f"verify-{backup_id}", settings.lock_ttl):
            try:
                results.append(verify_one(settings, tree, backup_id))
            except NotFound:  # pruned between the listing and the lock
                continue
    return {"checked": results, "failed": [r["id"] for r in results if not r["ok"]]}
