"""Upload backups to the off-site remotes: artifacts first, the manifest last.

Each file's MD5 (the checksum SFTP's md5sum and S3's ETag both give) is computed here and
compared with the one the remote reports after the upload; the MD5s travel in the
uploaded manifest, so a remote copy can be checked later from a host that has nothing
else.  Files the remote already holds with the same checksum are not sent again: a copy
cut short is completed by the next run.  Encrypted artifacts are sent as they are.

A failure never touches the local backup: it is marked `local-only` for that remote, an
alert goes out, and the next run tries again (`pending` lists what is still to send).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

import redis

from workers.clock import now_iso
from workers.config import Settings
from workers.errors import LockBusy
from workers.offsite import catalog
from workers.offsite.lock import holding
from workers.offsite.prune import prune_remote
from workers.offsite.rclone import HASH, OffsiteError, Rclone
from workers.offsite.settings import OffsiteSettings, Remote
from workers.ops import alerts
from workers.ops.retention import summary
from workers.policy.retention import Policy, decide
from workers.store import manifest as manifests
from workers.store.codec import CHUNK
from workers.store.layout import Tree

REPLICATED, LOCAL_ONLY = "replicated", "local-only"


def checksums(path) -> tuple[int, str, str]:
    """(size, md5, sha256) in one read: MD5 to compare with the remote, SHA-256 to be
    sure the file is still the one the manifest vouches for before it is copied."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def _local_files(tree: Tree, manifest: dict) -> dict[str, tuple[int, str]]:
    """{path: (size, md5)} of a backup's files but the manifest; refuses a changed artifact."""
    vouched = catalog.vouched(manifest)
    out = {}
    for rel in catalog.files_of(manifest)[:-1]:  # a parted artifact's list before its parts
        size, md5, sha = checksums(tree.root / rel)
        if rel in vouched and sha != vouched[rel]:
            raise OffsiteError(
                f"{rel} no longer matches its manifest (sha256 {sha}); not copied off-site: "
                f"run xiehe-backup verify {manifest['id']}"
            )
        catalog.vouch_parts(rel, tree.root, vouched)
        out[rel] = (size, md5)
    return out


def _confirm(rclone: Rclone, expected: dict[str, tuple[int, str]]) -> None:
    """The remote reports every file with our size and checksum, or this raises."""
    listing = rclone.listing()
    for rel, (size, md5) in expected.items():
        have = listing.get(rel)
        if have is None:
            raise OffsiteError(f"{rel} is missing on remote {rclone.remote.name} after upload")
        if have["size"] != size or have[HASH] != md5:
            raise OffsiteError(
                f"{rel} on remote {rclone.remote.name}: size {have['size']} {HASH} {have[HASH]}, "
                f"expected {size} {md5}"
            )


def _same(have: dict | None, size: int, md5: str) -> bool:
    return bool(have) and have["size"] == size and have[HASH] == md5


def replicate(
    tree: Tree, rclone: Rclone, backup_id: str, on_bytes: Callable[[int], None] = lambda n: None
) -> dict:
    """Send one local backup; returns what was sent.  Raises OffsiteError."""
    expected = _local_files(tree, manifests.read(tree, backup_id))
    there = rclone.listing()
    sent = reused = 0
    for unit, rels in catalog.transfer_units(list(expected)).items():
        size = sum(expected[rel][0] for rel in rels)
        if all(_same(there.get(rel), *expected[rel]) for rel in rels):
            reused += size
        else:
            rclone.retrying(f"upload {unit}", lambda u=unit: rclone.upload(tree.root / u, u))
            sent += size
        on_bytes(size)
    _confirm(rclone, expected)
    manifests.update(tree, backup_id, md5={rel: md5 for rel, (_, md5) in expected.items()})
    name = catalog.manifest_name(backup_id)
    path = tree.manifest(backup_id)
    rclone.retrying(f"upload {name}", lambda: rclone.upload(path, name))  # the copy exists now
    _confirm(rclone, {name: checksums(path)[:2]})
    return {"id": backup_id, "files": len(expected) + 1, "sent_bytes": sent, "reused_bytes": reused}


def local_ids(tree: Tree) -> frozenset[str]:
    """Every backup this host holds: each may still be sent to a remote."""
    return frozenset(tree.manifest_ids())


def pending(tree: Tree, remote: str, current: str, policy: Policy) -> list[str]:
    """Local verified backups not yet on `remote` that retention keeps: `current` first,
    then newest first (what is about to be pruned locally is not worth sending)."""
    found = manifests.read_all(tree)
    kept = {d["id"] for d in decide([summary(m) for m in found], policy) if d["keep"]}
    todo = [
        m["id"]
        for m in found
        if m["status"] == "verified"
        and m["id"] in kept
        and (m.get("offsite") or {}).get(remote, {}).get("status") != REPLICATED
    ]
    todo.sort(reverse=True)
    return sorted(todo, key=lambda i: i != current)  # stable: the rest stay newest first


def _mark(tree: Tree, backup_id: str, remote: Remote, **record) -> None:
    offsite = dict(manifests.read(tree, backup_id).get("offsite") or {})
    offsite[remote.name] = {"url": remote.url, "at": now_iso(), **record}
    manifests.update(tree, backup_id, offsite=offsite)


def _to_remote(
    tree: Tree,
    rclone: Rclone,
    current: str,
    policy: Policy,
    on_bytes: Callable[[int], None],
    now: datetime | None,
) -> dict:
    remote = rclone.remote
    sent: list[dict] = []
    for backup_id in pending(tree, remote.name, current, policy):
        try:
            sent.append(replicate(tree, rclone, backup_id, on_bytes))
        except (OffsiteError, OSError) as exc:
            _mark(tree, backup_id, remote, status=LOCAL_ONLY, error=str(exc))
            alerts.notify(
                {
                    "event": "offsite.failed",
                    "status": "failed",
                    "id": backup_id,
                    "remote": remote.name,
                    "url": remote.url,
                    "error": str(exc),
                    "meaning": "the backup is good but local only; the next run retries",
                }
            )
            return {"status": LOCAL_ONLY, "sent": sent, "failed": backup_id, "error": str(exc)}
        _mark(tree, backup_id, remote, status=REPLICATED)
    if not remote.prunes:
        return {"status": REPLICATED, "sent": sent, "deleted": [], "prune": "off (write-once)"}
    try:
        pruned = prune_remote(rclone, policy, now, sendable=local_ids(tree))
    except OffsiteError as exc:  # retention waits for the next run; the copies are there
        return {"status": REPLICATED, "sent": sent, "prune_error": str(exc)}
    return {"status": REPLICATED, "sent": sent, "deleted": pruned["deleted"]}


def replicate_pending(
    settings: Settings,
    offsite: OffsiteSettings,
    client: redis.Redis,
    current: str,
    policy: Policy,
    on_bytes: Callable[[int], None] = lambda n: None,
    now: datetime | None = None,
) -> dict:
    """Bring every remote up to date; {remote name: outcome}.  Never raises for a remote
    that fails: the outcome says so (and an alert went out).  `current`: the backup run
    calling (sent first), or "" when called by hand."""
    tree = Tree(settings.backup_dir)
    out = {}
    for remote in offsite.remotes:
        try:
            with holding(client, settings, remote.name, current or "replicate"):
                out[remote.name] = _to_remote(
                    tree, Rclone(remote, offsite), current, policy, on_bytes, now
                )
        except LockBusy as exc:  # the run holding it sends what this one would have
            out[remote.name] = {"status": "busy", "error": str(exc)}
    return out
