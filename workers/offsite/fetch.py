"""Bring a backup back from a remote into the local tree (`restore ID --from NAME`): the
way a new host, with only its configuration and keys, gets its data back.

Files are downloaded into the staging area, checked against the remote manifest's
SHA-256 there, then moved into place; the manifest is written last, as by a backup.  A
remote copy that does not match, or a manifest naming a path outside the tree's own
directories (a remote is not trusted with the host's file system), is refused before
any local file is replaced.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import PurePosixPath

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
    if not (inside or rel == f"backup_info_{backup_id}.txt"):
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
    fetched = 0
    try:
        for unit, files in catalog.transfer_units(rels).items():
            local = staging / unit
            local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder = files != [unit]  # a parted artifact's directory
            rclone.retrying(
                f"download {unit}", lambda u=unit, p=local, f=folder: rclone.download(u, p, f)
            )
            for rel in files:  # a parted artifact's list before its parts
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
