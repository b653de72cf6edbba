"""Bring a backup back from a remote into the local tree (`restore ID --from NAME`): the
way a new host, with only its configuration and keys, gets its data back.

Files are downloaded into the staging area, checked against the remote manifest's
SHA-256 there, then moved into place; the manifest is written last, as by a backup.  A
remote copy that does not match, or a manifest naming a path outside the tree's own
directories (a remote is not trusted with the host's file system), is refused before
any local file is replaced.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import PurePosixPath

from workers.clock import now_iso
from workers.errors import UnsafeArchive
from workers.offsite import catalog
from workers.offsite.rclone import OffsiteError, Rclone
from workers.store import atomic
from workers.store import manifest as manifests
from workers.store.codec import sha256_file
from workers.store.layout import KIND_DIRS, Tree


def _checked_path(rel: str, backup_id: str) -> str:
    parts = PurePosixPath(rel).parts
    inside = len(parts) == 2 and parts[0] in set(KIND_DIRS.values()) and parts[1] not in ("..", ".")
    if not (inside or rel == f"backup_info_{backup_id}.txt"):
        raise UnsafeArchive(f"the remote manifest of {backup_id} names an unsafe path {rel[:80]!r}")
    return rel


def fetch(
    tree: Tree, rclone: Rclone, backup_id: str, on_bytes: Callable[[int], None] = lambda n: None
) -> dict:
    manifest = catalog.manifest(rclone, backup_id)
    if manifest.get("id") != backup_id:
        raise OffsiteError(f"the remote manifest of {backup_id} describes {manifest.get('id')!r}")
    vouched = {a["path"]: a["sha256"] for a in manifest["artifacts"]}
    rels = [_checked_path(rel, backup_id) for rel in catalog.files_of(manifest)[:-1]]
    tree.ensure()
    staging = tree.staging(f"fetch-{backup_id}")
    fetched = 0
    try:
        for rel in rels:
            local = staging / rel
            local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            rclone.retrying(f"download {rel}", lambda r=rel, p=local: rclone.download(r, p))
            if rel in vouched and sha256_file(local) != vouched[rel]:
                raise OffsiteError(
                    f"{rel} from remote {rclone.remote.name} does not match its manifest's "
                    "sha256: the remote copy is damaged; nothing local was replaced"
                )
            local.chmod(0o600)
            size = local.stat().st_size
            fetched += size
            on_bytes(size)
        for rel in rels:
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
