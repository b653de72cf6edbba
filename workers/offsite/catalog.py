"""What a remote holds.  As in the local tree, a backup exists there once its manifest
does: the manifest is uploaded last, so a copy cut short is never taken for a backup.

    manifest_ID.json  backup_info_ID.txt  mysql/...  redis/...
    volumes/uploads_ID.tar.zst.parts/PARTS   a parted artifact's list, pinned by the manifest
    pool/<sha256>.zst                        the parts of every parted artifact, by content

A part holds the same bytes in every backup that links it (unchanged files), so the remote
keeps one copy, sent once: a night's copy sends its new parts, not the whole volume again.
A backup's files there are the keys of its manifest's `md5` map, written before the
manifest is sent.  A remote we do not prune (write-once: it expires copies by age itself)
keeps each copy's parts under the artifact's directory, as every copy made before the
pool did, and their maps say so."""

from __future__ import annotations

import json
import re
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


POOL = "pool"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def pool_path(sha256: str) -> str:
    """Where the remote keeps a part whose stored bytes have this sha256."""
    if not _SHA256.match(sha256):  # a list from a remote is not trusted with a path
        raise OffsiteError(f"a parts list names a part by {sha256[:80]!r}, not a sha256")
    return f"{POOL}/{sha256}.zst"


def is_pooled(rel: str) -> bool:
    return rel.startswith(f"{POOL}/")


def is_pool_path(rel: str) -> bool:
    """Whether `rel` is exactly what pool_path() makes (a remote's manifest may name it)."""
    name = rel.removeprefix(f"{POOL}/").removesuffix(".zst")
    return is_pooled(rel) and rel.endswith(".zst") and bool(_SHA256.match(name))


def list_path(artifact: dict) -> str:
    """A parted artifact's list, under the artifact's directory."""
    return f"{artifact['path']}/{parts.LIST_NAME}"


def _artifact_files(artifact: dict) -> list[str]:
    """A file, or a parted artifact's list and parts as copies kept them before the pool."""
    if "parts" not in artifact:
        return [artifact["path"]]
    names = map(parts.part_name, range(artifact["parts"]))
    return [list_path(artifact), *(f"{artifact['path']}/{name}" for name in names)]


def files_of(manifest: dict) -> list[str]:
    """Every file of a backup on a remote, manifest last: those its md5 map names (every
    copy's manifest has one), else those it had before the pool."""
    rels = list(manifest.get("md5") or {})
    if not rels:
        rels = [rel for a in manifest["artifacts"] for rel in _artifact_files(a)]
        rels.append(f"backup_info_{manifest['id']}.txt")
    return [*rels, manifest_name(manifest["id"])]


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
