"""Bring a backup back from a remote into the local tree (`restore ID --from NAME`): the
way a new host, with only its configuration and keys, gets its data back.

Files are downloaded into the staging area, checked against the remote manifest's
SHA-256 there (the parts from the remote's pool against their artifact's list, which the
manifest pins), then moved into place; the manifest is written last, as by a backup.  A
remote copy that does not match, or a manifest naming a path outside the tree's own
directories (a remote is not trusted with the host's file system), is refused before
any local file is replaced.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from workers.clock import now_iso
from workers.errors import UnsafeArchive
from workers.offsite import catalog
from workers.offsite.rclone import OffsiteError, Rclone
from workers.store import atomic, parts
from workers.store import manifest as manifests
from workers.store.codec import sha256_file
from workers.store.layout import KIND_DIRS, Tree

PART_FILE = re.compile(rf"^(\d{{8}}\.zst|{parts.LIST_NAME})$")


def _checked_path(rel: str, backup_id: str) -> str:
    names = PurePosixPath(rel).parts
    inside = len(names) in (2, 3) and names[0] in set(KIND_DIRS.values())
    inside = inside and names[1] not in ("..", ".")
    if len(names) == 3:  # a part of a parted artifact
        inside = inside and parts.is_parted(names[1]) and bool(PART_FILE.match(names[2]))
    if not (inside or catalog.is_pool_path(rel) or rel == f"backup_info_{backup_id}.txt"):
        raise UnsafeArchive(f"the remote manifest of {backup_id} names an unsafe path {rel[:80]!r}")
    return rel


def fetch(
    tree: Tree, rclone: Rclone, backup_id: str, on_bytes: Callable[[int], None] = lambda n: None
) -> dict:
    manifest = catalog.manifest(rclone, backup_id)
    if manifest.get("id") != backup_id:
        raise OffsiteError(f"the remote manifest of {backup_id} describes {manifest.get('id')!r}")
    vouched = catalog.vouched(manifest)
    rels = [_checked_path(rel, backup_id) for rel in catalog.files_of(manifest)[:-1]]
    tree.ensure()
    staging = tree.staging(f"fetch-{backup_id}")
    shutil.rmtree(staging, ignore_errors=True)  # what a crashed fetch left
    fetched = 0

    def checked(rel: str) -> None:
        nonlocal fetched
        if rel in vouched and sha256_file(staging / rel) != vouched[rel]:
            raise OffsiteError(
                f"{rel} from remote {rclone.remote.name} does not match its manifest's "
                "sha256: the remote copy is damaged; nothing local was replaced"
            )
        catalog.vouch_parts(rel, staging, vouched)
        (staging / rel).chmod(0o600)
        size = (staging / rel).stat().st_size
        fetched += size
        on_bytes(size)

    try:
        direct = [rel for rel in rels if not catalog.is_pooled(rel)]
        for unit, files in catalog.transfer_units(direct).items():
            local = staging / unit
            local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder = files != [unit]  # a parted artifact's directory
            rclone.retrying(
                f"download {unit}", lambda u=unit, p=local, f=folder: rclone.download(u, p, f)
            )
            for rel in files:  # a parted artifact's list before its parts
                checked(rel)
        placed = _pooled_parts(rclone, manifest, staging, set(direct), checked)
        for rel in direct + placed:
            atomic.move(staging / rel, tree.root / rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest["fetched_from"] = {
        "remote": rclone.remote.name,
        "url": rclone.remote.url,
        "at": now_iso(),
    }
    manifests.write(tree, manifest)  # the backup is local again from this instant
    return {
        "backup_id": backup_id,
        "remote": rclone.remote.name,
        "files": len(rels),
        "fetched_bytes": fetched,
    }


def _pooled_parts(
    rclone: Rclone,
    manifest: dict,
    staging: Path,
    direct: set[str],
    checked: Callable[[str], None],
) -> list[str]:
    """The parts of parted artifacts that the remote keeps in its pool, downloaded in one
    call and placed under their artifacts' names by the lists (each already checked
    against the manifest); the local paths placed."""
    wanted: list[tuple[str, str]] = []  # (pool path, the part's path in the tree)
    for artifact in manifest["artifacts"]:
        if "parts" not in artifact:
            continue
        for part in parts.read_list(staging / artifact["path"]):
            rel = f"{artifact['path']}/{part.name}"
            if rel not in direct:  # not kept beside its list, as copies were before the pool
                wanted.append((catalog.pool_path(part.sha256), rel))
    if not wanted:
        return []
    names = sorted({pooled.rpartition("/")[2] for pooled, _ in wanted})
    pool = staging / catalog.POOL
    pool.mkdir(mode=0o700)
    rclone.retrying(
        f"download of {len(names)} part(s)",
        lambda: rclone.download_named(catalog.POOL, names, pool),
    )
    for pooled, rel in wanted:
        try:
            os.link(staging / pooled, staging / rel)
        except FileNotFoundError:
            raise OffsiteError(
                f"{pooled}, a part of {rel.rpartition('/')[0]}, is missing on remote "
                f"{rclone.remote.name}: the remote copy is incomplete; nothing local was replaced"
            ) from None
        checked(rel)  # against its list: the sha256 that named it
    return [rel for _, rel in wanted]
