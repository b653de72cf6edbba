"""What a remote holds.  As in the local tree, a backup exists there once its manifest
does: the manifest is uploaded last, so a copy cut short is never taken for a backup."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from workers.errors import NotFound
from workers.offsite.rclone import OffsiteError, Rclone
from workers.store import parts
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


def _artifact_files(artifact: dict) -> list[str]:
    """A file, or a parted artifact's list and parts (each sent as a file of its own)."""
    if "parts" not in artifact:
        return [artifact["path"]]
    names = [parts.LIST_NAME, *map(parts.part_name, range(artifact["parts"]))]
    return [f"{artifact['path']}/{name}" for name in names]


def files_of(manifest: dict) -> list[str]:
    """Every file of a backup on a remote, manifest last."""
    rels = [rel for a in manifest["artifacts"] for rel in _artifact_files(a)]
    return [*rels, f"backup_info_{manifest['id']}.txt", manifest_name(manifest["id"])]


def transfer_units(rels: list[str]) -> dict[str, list[str]]:
    """{what one rclone call sends: a file, or a parted artifact's directory: its files}."""
    units: dict[str, list[str]] = {}
    for rel in rels:
        parent = rel.rpartition("/")[0]
        units.setdefault(parent if parts.is_parted(parent) else rel, []).append(rel)
    return units


def vouch_parts(rel: str, root: Path, vouched: dict[str, str]) -> None:
    """Once a parted artifact's list (pinned by the manifest) is checked, it pins the parts."""
    directory, _, name = rel.rpartition("/")
    if name == parts.LIST_NAME and parts.is_parted(directory):
        listed = parts.read_list(root / directory)
        vouched.update({f"{directory}/{part.name}": part.sha256 for part in listed})


def vouched(manifest: dict) -> dict[str, str]:
    """{file: sha256} the manifest pins directly (a parted artifact's list pins its parts)."""
    return {_artifact_files(a)[0]: a["sha256"] for a in manifest["artifacts"]}
