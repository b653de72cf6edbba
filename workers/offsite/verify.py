"""Check a remote copy without downloading it: every file the remote's manifest names is
there, with the size and the MD5 recorded when it was sent (the remote computes its own:
md5sum on the SFTP server, the object's ETag on S3).

The nightly copy judges a pooled part it sent before by name and size alone, so the
scheduled verify has each remote check its newest copy too.  A damaged or missing pooled
part is forgotten locally (`pooled_md5`): the next copy that names it has the remote hash
it, finds it wrong and sends it again."""

from __future__ import annotations

import redis

from workers.config import Settings
from workers.errors import LockBusy
from workers.offsite import catalog
from workers.offsite.lock import holding
from workers.offsite.rclone import HASH, OffsiteError, Rclone
from workers.offsite.settings import OffsiteSettings
from workers.ops import alerts
from workers.store import manifest as manifests
from workers.store.layout import Tree


def verify_remote(rclone: Rclone, backup_id: str) -> dict:
    manifest = catalog.manifest(rclone, backup_id)
    recorded = manifest.get("md5") or {}
    sizes = {a["path"]: a["size_bytes"] for a in manifest["artifacts"]}
    files = catalog.files_of(manifest)[:-1]
    listing = rclone.listing(files)
    problems, damaged = [], []
    for rel in files:
        have = listing.get(rel)
        if have is None:
            problems.append(f"{rel}: missing")
        elif rel in sizes and have["size"] != sizes[rel]:
            problems.append(f"{rel}: {have['size']} bytes, expected {sizes[rel]}")
        elif rel not in recorded:
            problems.append(f"{rel}: no {HASH} recorded when it was sent")
            continue
        elif have[HASH] != recorded[rel]:
            problems.append(f"{rel}: {HASH} {have[HASH]}, expected {recorded[rel]}")
        else:
            continue
        damaged.append(rel)
    return {
        "id": backup_id,
        "remote": rclone.remote.name,
        "ok": not problems,
        "checked": len(recorded),
        "problems": problems,
        "damaged": damaged,
    }


def _forget(tree: Tree, rels: set[str]) -> None:
    """Drop the pooled parts' md5s from every local manifest that keeps them."""
    for manifest in manifests.read_all(tree):
        pooled = manifest.get("pooled_md5") or {}
        if rels & pooled.keys():
            kept = {rel: md5 for rel, md5 in pooled.items() if rel not in rels}
            manifests.update(tree, manifest["id"], pooled_md5=kept)


def verify_remotes(settings: Settings, offsite: OffsiteSettings, client: redis.Redis) -> dict:
    """Each remote checks its newest copy; {remote name: outcome}.  Never raises: a remote
    that cannot be checked, or a damaged copy, is in the outcome and in an alert."""
    out = {}
    for remote in offsite.remotes:
        rclone = Rclone(remote, offsite)
        try:
            with holding(client, settings, remote.name, "verify"):
                copies = catalog.manifests(rclone)
                result = verify_remote(rclone, copies[-1]["id"]) if copies else None
        except LockBusy as exc:  # a long copy still running: checked next time, no alarm
            out[remote.name] = {"ok": None, "note": f"not checked: {exc}"}
            continue
        except OffsiteError as exc:
            result = {"ok": False, "problems": [str(exc)], "damaged": []}
        if result is None:
            out[remote.name] = {"ok": True, "checked": 0, "note": "no copy there yet"}
            continue
        _forget(Tree(settings.backup_dir), {r for r in result["damaged"] if catalog.is_pooled(r)})
        out[remote.name] = result
        if not result["ok"]:
            alerts.notify(
                {
                    "event": "offsite.verify_failed",
                    "status": "failed",
                    "id": result.get("id", ""),
                    "remote": remote.name,
                    "url": remote.url,
                    "error": "; ".join(result["problems"][:5]),
                    "meaning": "the off-site copy is damaged or unreachable; the next copy "
                    "sends its damaged parts again",
                }
            )
    return out
