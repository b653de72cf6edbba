"""What a remote holds.  As in the local tree, a backup exists there once its manifest
does: the manifest is uploaded last, so a copy cut short is never taken for a backup."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from workers.errors import NotFound
from workers.offsite.rclone import OffsiteError, Rclone
from workers.store.layout import is_backup_id


def manifest_name(backup_id: str) -> str:
    return f"manifest_{backup_id}.json"


def manifests(rclone: Rclone) -> list[dict]:
    """Every complete backup's manifest on the remote, oldest first (one rclone call)."""
    with tempfile.TemporaryDirectory(prefix="xiehe-remote-") as tmp:
        rclone.download_matching("/manifest_*.json", Path(tmp))
        found = []
        for path in sorted(Path(tmp).glob("manifest_*.json")):
            try:
                manifest = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # an unreadable manifest is not a backup; verify --remote says why
            if is_backup_id(manifest.get("id", "")) and path.name == manifest_name(manifest["id"]):
                found.append(manifest)
    return sorted(found, key=lambda m: m["id"])


def manifest(rclone: Rclone, backup_id: str) -> dict:
    if not is_backup_id(backup_id):
        raise NotFound(f"unknown backup id {backup_id[:40]!r}")
    try:
        raw = rclone.read(manifest_name(backup_id))
    except OffsiteError:
        raw = b""  # S3 answers an empty body for a missing object, SFTP an error
    if not raw:  # missing, or the remote is unreachable: listing it tells which
        ids = [m["id"] for m in manifests(rclone)]
        known = f"it holds {', '.join(ids[-5:])}" if ids else "it holds no complete backup"
        raise NotFound(
            f"backup {backup_id} is not on remote {rclone.remote.name} ({rclone.remote.url}); "
            f"{known} (xiehe-backup list --remote {rclone.remote.name})"
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise OffsiteError(
            f"the manifest of {backup_id} on remote {rclone.remote.name} is not valid JSON"
        ) from None


def files_of(manifest: dict) -> list[str]:
    """Every file of a backup on a remote, manifest last."""
    rels = [a["path"] for a in manifest["artifacts"]]
    return [*rels, f"backup_info_{manifest['id']}.txt", manifest_name(manifest["id"])]
