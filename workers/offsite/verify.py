"""Check a remote copy without downloading it: every file the remote's manifest names is
there, with the size and the MD5 recorded when it was sent (the remote computes its own:
md5sum on the SFTP server, the object's ETag on S3)."""

from __future__ import annotations

from workers.offsite import catalog
from workers.offsite.rclone import HASH, Rclone


def verify_remote(rclone: Rclone, backup_id: str) -> dict:
    manifest = catalog.manifest(rclone, backup_id)
    recorded = manifest.get("md5") or {}
    sizes = {a["path"]: a["size_bytes"] for a in manifest["artifacts"]}
    files = catalog.files_of(manifest)[:-1]
    listing = rclone.listing(files)
    problems = []
    for rel in files:
        have = listing.get(rel)
        if have is None:
            problems.append(f"{rel}: missing")
        elif rel in sizes and have["size"] != sizes[rel]:
            problems.append(f"{rel}: {have['size']} bytes, expected {sizes[rel]}")
        elif rel not in recorded:
            problems.append(f"{rel}: no {HASH} recorded when it was sent")
        elif have[HASH] != recorded[rel]:
            problems.append(f"{rel}: {HASH} {have[HASH]}, expected {recorded[rel]}")
    return {
        "id": backup_id,
        "remote": rclone.remote.name,
        "ok": not problems,
        "checked": len(recorded),
        "problems": problems,
    }
