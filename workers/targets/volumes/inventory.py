"""What a volume holds, path by path, and the manifest digest of it that an archive
records and a restore is checked against."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from json.encoder import encode_basestring

import docker

from workers.store.codec import CHUNK, ChunkStream
from workers.targets.tar_safety import ROOT, SafetyFilter, normalize, open_stream, safe_members
from workers.targets.volumes.engine import check, helper_container, volume_tar

_MANIFEST_ENCODE = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode  # made once
# The same lines, filled in three times faster, for the entries a volume is made of (its
# root, without an mtime, goes through the encoder): [path, entry], keys in sorted order.
_HEAD = '[%s, {"gid": %d, "mode": %d, "mtime": %d, '
_MANIFEST_LINES = {
    "file": _HEAD + '"sha256": %s, "size": %d, "type": "file", "uid": %d}]',
    "dir": _HEAD + '"type": "dir", "uid": %d}]',
    "symlink": _HEAD + '"target": %s, "type": "symlink", "uid": %d}]',
    "hardlink": _HEAD + '"target": %s, "type": "hardlink", "uid": %d}]',
}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def inventory_entry(member: tarfile.TarInfo, path: str, sha256: str | None) -> dict:
    """How one path looks in an inventory (and in the manifest digest)."""
    entry: dict = {"mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid}
    if path != ROOT:  # the engine never rewrites the root's mtime on restore
        entry["mtime"] = int(member.mtime)
    if member.isdir():
        entry["type"] = "dir"
    elif member.issym():
        entry.update(type="symlink", target=member.linkname)
    elif member.islnk():
        entry.update(type="hardlink", target=normalize(member.linkname))
    else:
        entry.update(type="file", size=member.size, sha256=sha256)
    return entry


def _content_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    sha = hashlib.sha256()
    src = tar.extractfile(member)
    while chunk := src.read(CHUNK):
        sha.update(chunk)
    return sha.hexdigest()


def inventory_entries(
    tar: tarfile.TarFile, guard: SafetyFilter | None
) -> Iterator[tuple[str, dict]]:
    """(path, inventory entry) of each member, files hashed; judged by guard when given."""
    members = safe_members(tar, guard) if guard else ((m, normalize(m.name)) for m in tar)
    for member, path in members:
        sha = _content_sha256(tar, member) if member.isreg() else None
        yield path, inventory_entry(member, path, sha)


def manifest_line(path: str, entry: dict) -> bytes:
    """[path, entry] as JSON, sorted keys, non-ASCII kept: the manifest digest's bytes."""
    kind = entry["type"]
    if "mtime" not in entry:
        line = _MANIFEST_ENCODE([path, entry])
    else:
        if kind == "file":
            sha = entry["sha256"]
            rest = ("null" if sha is None else encode_basestring(sha), entry["size"])
        else:
            rest = () if kind == "dir" else (encode_basestring(entry["target"]),)
        line = _MANIFEST_LINES[kind] % (
            encode_basestring(path), entry["gid"], entry["mode"], entry["mtime"], *rest,
            entry["uid"],
        )  # fmt: skip
    return line.encode("utf-8", "surrogateescape") + b"\n"


def manifest_sha256(inventory: dict[str, dict]) -> str:
    """The digest archive() returns, recomputed from file_inventory() (same walk order)."""
    sha = hashlib.sha256()
    for path, entry in inventory.items():
        sha.update(manifest_line(path, entry))
    return sha.hexdigest()


def file_inventory(engine: docker.DockerClient, name: str, helper_image: str) -> dict[str, dict]:
    """Every path of the volume -> type, mode, owner, mtime, size and sha256 or link target."""
    check(engine, name)
    with helper_container(engine, helper_image, name, writable=False, command=None) as helper:
        raw = io.BufferedReader(ChunkStream(volume_tar(helper, name)), CHUNK)
        with open_stream(raw) as tar:
            return dict(inventory_entries(tar, None))
