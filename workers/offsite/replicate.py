"""Upload backups to the off-site remotes: artifacts first, the manifest last.

Each file's MD5 (the checksum SFTP's md5sum and S3's ETag both give) is computed here and
compared with the one the remote reports after the upload; the MD5s travel in the
uploaded manifest, so a remote copy can be checked later from a host that has nothing
else.  Files the remote already holds with the same checksum are not sent again: a copy
cut short is completed by the next run, and the parts of parted artifacts go to the
remote's pool (see catalog), where those an earlier copy sent are found by name.
Encrypted artifacts are sent as they are.

A failure never touches the local backup: it is marked `local-only` for that remote, an
alert goes out, and the next run tries again (`pending` lists what is still to send).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

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
from workers.store import atomic, parts
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


@dataclass(frozen=True)
class _File:
    """One file of a backup: where it goes on the remote, and what the manifest pins."""

    rel: str
    local: Path
    sha256: str | None = None  # None: not pinned (backup_info)
    size: int | None = None  # known without reading it (a part, from its list)


def _files(tree: Tree, manifest: dict, pool: bool) -> list[_File]:
    """A backup's files but the manifest; a parted artifact's list is checked against the
    manifest before the parts it names are trusted to it.  `pool`: parts go to the
    remote's pool, else beside their list (a remote that expires copies by age itself
    must not hold parts that newer copies share)."""
    out = []
    for artifact in manifest["artifacts"]:
        path = tree.root / artifact["path"]
        if "parts" not in artifact:
            out.append(_File(artifact["path"], path, artifact["sha256"]))
            continue
        if parts.stored_sha256(path) != artifact["sha256"]:
            raise _changed(artifact["path"], manifest["id"])
        out.append(_File(catalog.list_path(artifact), path / parts.LIST_NAME, artifact["sha256"]))
        out += [
            _File(
                catalog.pool_path(part.sha256) if pool else f"{artifact['path']}/{part.name}",
                path / part.name,
                part.sha256,
                part.size,
            )
            for part in parts.read_list(path)
        ]
    info = f"backup_info_{manifest['id']}.txt"
    return [*out, _File(info, tree.root / info)]


def _changed(rel: str, backup_id: str) -> OffsiteError:
    return OffsiteError(
        f"{rel} no longer matches its manifest; not copied off-site: "
        f"run xiehe-backup verify {backup_id}"
    )


def _sent_before(tree: Tree, wanted: set[str]) -> dict[str, str]:
    """{pool path: md5} of the wanted parts that earlier copies sent, looked up newest
    backup first (consecutive backups share most parts): a part is named by its sha256,
    so the md5 computed when it was first sent holds for every backup that links it."""
    known: dict[str, str] = {}
    for manifest in reversed(manifests.read_all(tree)):
        if len(known) == len(wanted):
            break
        pooled = manifest.get("pooled_md5") or {}
        known |= {rel: pooled[rel] for rel in wanted - known.keys() if rel in pooled}
    return known


def _present(rclone: Rclone, files: list[_File], known: dict[str, str]) -> dict[str, dict]:
    """What the remote holds of the backup's files.  A pooled part whose md5 is known is
    judged by name and size: its name is its content's sha256, and the remote reading
    every part of the pool on every run would cost more than sending the new ones
    (`verify --remote` has the remote check each md5).  Others come with their md5."""
    present = rclone.listing(hashes=False)
    unsure = [f.rel for f in files if f.rel in present and f.rel not in known]
    return present | (rclone.listing(unsure) if unsure else {})


def _confirm(rclone: Rclone, expected: dict[str, tuple[int, str]]) -> None:
    """The remote reports every file with our size and checksum, or this raises."""
    listing = rclone.listing(list(expected))
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


def _units(rels: list[str]) -> dict[str, list[str]]:
    """{what one rclone call sends: its files}: a parted artifact's directory when parts
    kept beside its list are to be sent, else each file alone (a list whose parts are
    pooled, whose directory locally holds them all)."""
    beside = {
        parent
        for rel in rels
        if parts.is_parted(parent := rel.rpartition("/")[0])
        and not rel.endswith(f"/{parts.LIST_NAME}")
    }
    units: dict[str, list[str]] = {}
    for rel in rels:
        parent = rel.rpartition("/")[0]
        units.setdefault(parent if parent in beside else rel, []).append(rel)
    return units


@contextmanager
def _pool_dir(tree: Tree, backup_id: str, files: list[_File]) -> Iterator[Path]:
    """The parts to send, hard-linked under their pool names (one rclone call sends them)."""
    directory = tree.staging(f"offsite-{backup_id}")
    shutil.rmtree(directory, ignore_errors=True)  # what a crashed run left
    directory.mkdir(parents=True, mode=0o700)
    try:
        for file in files:
            target = directory / file.rel.rpartition("/")[2]
            try:
                os.link(file.local, target)
            except FileExistsError:
                continue  # two parts of the backup hold the same bytes
            except OSError:
                shutil.copyfile(file.local, target)  # a file system without hard links
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def replicate(
    tree: Tree, rclone: Rclone, backup_id: str, on_bytes: Callable[[int], None] = lambda n: None
) -> dict:
    """Send one local backup; returns what was sent.  Raises OffsiteError.  Parts the remote
    holds already (with the md5 recorded when they were sent) are neither read nor sent."""
    files = _files(tree, manifests.read(tree, backup_id), rclone.remote.prunes)
    known = _sent_before(tree, {file.rel for file in files if catalog.is_pooled(file.rel)})
    there = _present(rclone, files, known)
    expected: dict[str, tuple[int, str]] = {}
    send: dict[str, _File] = {}
    reused = 0
    for file in files:
        md5 = known.get(file.rel)
        if md5 and (there.get(file.rel) or {}).get("size") == file.size:
            expected[file.rel] = (file.size, md5)
        else:
            size, md5, sha = checksums(file.local)
            if file.sha256 and sha != file.sha256:
                raise _changed(file.rel, backup_id)
            expected[file.rel] = (size, md5)
            if not _same(there.get(file.rel), size, md5):
                send[file.rel] = file
                continue
        reused += expected[file.rel][0]
        on_bytes(expected[file.rel][0])
    pooled = [f for f in send.values() if catalog.is_pooled(f.rel)]
    for unit, rels in _units([rel for rel in send if not catalog.is_pooled(rel)]).items():
        alone = rels == [unit]  # a file to send, not a directory of parts some of which are
        send_unit = partial(rclone.upload, tree.root / unit, unit, alone)
        rclone.retrying(f"upload {unit}", send_unit)
        on_bytes(sum(expected[rel][0] for rel in rels))
    if pooled:
        with _pool_dir(tree, backup_id, pooled) as directory:
            what = f"upload of {len(pooled)} part(s)"
            rclone.retrying(what, lambda: rclone.upload(directory, catalog.POOL, every=True))
        on_bytes(sum(expected[f.rel][0] for f in pooled))
    _confirm(rclone, {rel: expected[rel] for rel in send})
    md5 = {rel: md5 for rel, (_, md5) in expected.items()}
    kept = {rel: md5 for rel, md5 in md5.items() if catalog.is_pooled(rel)}
    local = manifests.update(tree, backup_id, **({"pooled_md5": kept} if kept else {}))
    _send_manifest(tree, rclone, {**_remote_view(local), "md5": md5})  # the copy exists now
    sent = sum(expected[rel][0] for rel in send)
    return {
        "id": backup_id,
        "files": len(expected) + 1,
        "sent_bytes": sent,
        "reused_bytes": reused,
    }


def _remote_view(manifest: dict) -> dict:
    """The local manifest as a remote keeps it: its files there go in its own md5 map."""
    return {k: v for k, v in manifest.items() if k not in ("md5", "pooled_md5")}


def _send_manifest(tree: Tree, rclone: Rclone, manifest: dict) -> None:
    """The remote's manifest, with that remote's md5 map (remotes differ in layout)."""
    name = catalog.manifest_name(manifest["id"])
    directory = tree.staging(f"offsite-{manifest['id']}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / name
    try:
        atomic.write_json(path, manifest)
        rclone.retrying(f"upload {name}", lambda: rclone.upload(path, name))
        _confirm(rclone, {name: checksums(path)[:2]})
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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
