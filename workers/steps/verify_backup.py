"""Verify artifacts: stored sha256, whole compressed stream, and content checks per kind.

Used by the backup's verify step (on staged files), by `xiehe-backup verify` and by a
restore's preflight (on published files).  Without the age identity, an encrypted
artifact is checked by its ciphertext's sha256 only and reported as such.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workers.context import StepContext
from workers.errors import BackupError
from workers.store import parts
from workers.store.codec import ChunkStream, CorruptArtifact, PlainHasher, read_plain
from workers.targets import redis, tar_safety

DUMP_MARKER = b"-- Dump completed"


def _tail_has_marker(chunks: Iterable[bytes]) -> dict:
    tail = b""
    for chunk in chunks:
        tail = (tail + chunk[-4096:])[-4096:]
    if DUMP_MARKER not in tail:
        raise CorruptArtifact("the SQL dump has no completion marker: it is truncated")
    return {"complete": True}


def _tar_members(chunks: Iterable[bytes]) -> dict:
    return tar_safety.scan_stream(io.BufferedReader(ChunkStream(iter(chunks)), 1 << 20))


CONTENT_CHECKS = {
    "mysql": _tail_has_marker,
    "redis": lambda chunks: redis.verify_rdb(chunks),
    "volume": _tar_members,
}


def _hashed(chunks: Iterator[bytes], hasher: PlainHasher) -> Iterator[bytes]:
    """The chunks, hashed by the hasher's thread while the next one is decompressed."""
    for chunk in chunks:
        hasher.plain(chunk)
        yield chunk


def verify_artifact(
    path: Path,
    artifact: dict,
    identity_file: Path | None,
    side_by_side: bool = True,
    just_written: bool = False,
) -> dict:
    """Check one artifact; raise CorruptArtifact naming it and the defect.

    `just_written`: the backup's own check of what it wrote.  A parted artifact's parts
    are then read back, except those linked from a backup that checked them (for their
    sha256 alone if the writer decoded them as it wrote them); the content pass is left
    out, since every part's plaintext matches what the writer judged and hashed.
    A stream the writer decoded as it wrote it (`decoded_when_written`) is only read back
    for its sha256: those bytes decoded to the plaintext hashed, which the capture judged
    (the RDB's CRC64 as it arrived, the dump's completion line written before the commit).

    `side_by_side`: the stored bytes' sha256 and the content pass (decompress, hash, check)
    read the file in two threads, both in C code that releases the GIL (a fifth less time
    for one volume artifact here); not worth it when other artifacts already fill the
    cores.  A wrong sha256 is reported first, whatever the content pass made of the bytes."""
    name = artifact["file"]
    mismatch = CorruptArtifact(f"{name}: sha256 does not match the manifest (damaged or altered)")
    if not path.exists():
        raise CorruptArtifact(f"{name}: missing")
    if parts.stored_size(path) != artifact["size_bytes"]:
        raise mismatch
    if just_written and parts.is_parted(path):
        if parts.stored_sha256(path) != artifact["sha256"]:
            raise mismatch
        decoded = bool(artifact.get("decoded_when_written"))
        return {"file": name, "sha256": "ok", "content": "ok", **parts.check(path, True, decoded)}
    if just_written and artifact.get("decoded_when_written"):
        if parts.stored_sha256(path) != artifact["sha256"]:
            raise mismatch
        return {"file": name, "sha256": "ok", "content": "ok, decoded when written"}
    readable = not (artifact.get("encrypted") and identity_file is None)
    content: dict = {}
    defect: CorruptArtifact | None = None
    if readable and side_by_side:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(parts.stored_sha256, path)
            try:
                content = _content(path, artifact, identity_file)
            except CorruptArtifact as exc:
                defect = exc
            stored = pending.result()
    else:
        stored = parts.stored_sha256(path)
        if readable and stored == artifact["sha256"]:
            content = _content(path, artifact, identity_file)
    if stored != artifact["sha256"]:
        raise mismatch
    if defect:
        raise defect
    if not readable:
        return {"file": name, "sha256": "ok", "content": "not checked: encrypted, no identity"}
    return {"file": name, "sha256": "ok", "content": "ok", **content}


def _content(path: Path, artifact: dict, identity_file: Path | None) -> dict:
    """The plaintext's sha256 and the kind's own check; raises CorruptArtifact.  A parted
    artifact's plaintext is not hashed whole: each part's is checked as it is read."""
    name = artifact["file"]
    check = CONTENT_CHECKS.get(artifact["kind"])
    hasher = None if parts.is_parted(path) else PlainHasher()
    chunks = read_plain(path, identity_file)
    if hasher:
        chunks = _hashed(chunks, hasher)
    try:
        detail = check(chunks) if check else {}
        for _ in chunks:  # a content check may stop early: read (and hash) the rest
            pass
    except CorruptArtifact:
        raise
    except Exception as exc:  # a parser's error on damaged content
        raise CorruptArtifact(f"{name}: {exc}") from None
    finally:
        if hasher:
            hasher.finish()
    if hasher and hasher.sha.hexdigest() != artifact["plain_sha256"]:
        raise CorruptArtifact(f"{name}: the decompressed content does not match its sha256")
    return detail or {}


def verify_all(
    root: Path,
    artifacts: list[dict],
    identity_file: Path | None,
    on_done: Callable[[dict], None] = lambda artifact: None,
    just_written: bool = False,
) -> list[dict]:
    """Every artifact checked, several at once: decompression and hashing run in C code
    that releases the GIL, so the artifacts of one backup share the cores.  Results in
    the artifacts' order; the first defect found in that order is raised."""

    cores = os.cpu_count() or 1
    side_by_side = len(artifacts) < cores

    def one(artifact: dict) -> dict:
        path = root / artifact["path"]
        result = verify_artifact(path, artifact, identity_file, side_by_side, just_written)
        on_done(artifact)
        return result

    with ThreadPoolExecutor(max(1, min(len(artifacts), cores))) as pool:
        return list(pool.map(one, artifacts))


def verify_staged(run: dict, ctx: StepContext) -> dict:
    """The backup's verify step: re-read every staged artifact before it is published."""
    from workers.steps.staging import all_artifacts

    staging = ctx.tree.staging(run["id"])
    artifacts = all_artifacts(run)
    if not artifacts and not run.get("tolerate_missing"):
        raise BackupError("nothing was backed up: no target is configured or selected")
    ctx.progress.total = sum(a["size_bytes"] for a in artifacts)
    lock = threading.Lock()

    def done(artifact: dict) -> None:
        with lock:
            ctx.progress.add(artifact["size_bytes"])

    identity = ctx.settings.age_identity_file
    return {"checked": verify_all(staging, artifacts, identity, done, just_written=True)}
