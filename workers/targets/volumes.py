"""Docker named volumes: archive to a tar artifact and restore from one, through the engine API.

The volume is never read from the host's /var/lib/docker: a helper container (created, not
started) mounts it, and the engine's archive API streams a tar of the mount point.  Backup
tees that stream unchanged into the artifact while parsing it (to count, hash and check
members), so the artifact is exactly what the engine produced and nothing is staged.
Restore re-emits every member that passed the safety filter (normalized names, no stray
PAX fields), so the engine only ever unpacks headers this module has judged.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import requests
import urllib3
from docker.errors import DockerException, ImageNotFound, NotFound

from workers.errors import TargetError, UnsafeArchive
from workers.store.codec import (
    CHUNK,
    ArtifactWriter,
    ChunkStream,
    Codec,
    CorruptArtifact,
    open_plain,
)
from workers.targets.docker_engine import (
    containers_using_volume,
    start_containers,
    stop_containers,
)
from workers.targets.tar_safety import (
    COUNTS,
    ROOT,
    SafetyFilter,
    normalize,
    open_stream,
    safe_members,
    scan,
)

Progress = Callable[[int], None] | None
SOURCE = "/source"  # where a helper mounts the volume read-only
TARGET = "/target"  # where a helper mounts it read-write
PROGRESS_EVERY = 16 << 20
HELPER_TIMEOUT = 3600  # seconds for the wipe step of a restore
# get_archive streams straight from urllib3, whose errors requests does not wrap there
_ENGINE_ERRORS = (DockerException, requests.RequestException, urllib3.exceptions.HTTPError)


def check(engine: docker.DockerClient, name: str) -> dict:
    """What the volume is and which running containers use it."""
    try:
        volume = engine.volumes.get(name)
    except NotFound:
        raise TargetError(f"volume:{name}", "does not exist") from None
    except _ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot inspect: {exc}") from None
    attrs = volume.attrs
    return {
        "name": name,
        "mountpoint": attrs.get("Mountpoint"),
        "driver": attrs.get("Driver"),
        "labels": attrs.get("Labels") or {},
        "in_use_by": _running_users(engine, name),
    }


def _running_users(engine: docker.DockerClient, name: str) -> list[str]:
    return [c["name"] for c in containers_using_volume(engine, name) if c["running"]]


@contextmanager
def _quiesced(engine: docker.DockerClient, name: str, stop_running: bool) -> Iterator[None]:
    """No running container writes the volume inside the block: refuse, or stop and restart."""
    users = _running_users(engine, name)
    if users and not stop_running:
        raise TargetError(
            f"volume:{name}",
            f"in use by running container(s) {', '.join(users)}; a live copy of a database "
            "is not consistent: stop them first or pass stop_running=True",
        )
    stopped = stop_containers(engine, users)
    try:
        yield
    finally:
        start_containers(engine, stopped)


@contextmanager
def _helper(
    engine: docker.DockerClient, image: str, name: str, writable: bool, command: list[str] | None
) -> Iterator:
    """A helper container mounting the volume; always removed, also on error."""
    mount = TARGET if writable else SOURCE
    try:
        container = engine.containers.create(
            image,
            command=command or ["true"],
            name=f"xiehe-helper-{uuid.uuid4().hex[:12]}",
            volumes={name: {"bind": mount, "mode": "rw" if writable else "ro"}},
            network_disabled=True,
            labels={"xiehe.helper": name},
        )
    except ImageNotFound:
        raise TargetError(
            "docker",
            f"helper image {image!r} not found: build it with ops/images/build_helper_image.sh",
        ) from None
    except _ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot create a helper container: {exc}") from None
    try:
        yield container
    finally:
        container.remove(force=True)


def _entry(member: tarfile.TarInfo, path: str, sha256: str | None) -> dict:
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


def _entries(tar: tarfile.TarFile, guard: SafetyFilter | None) -> Iterator[tuple[str, dict]]:
    members = safe_members(tar, guard) if guard else ((m, normalize(m.name)) for m in tar)
    for member, path in members:
        sha = _content_sha256(tar, member) if member.isreg() else None
        yield path, _entry(member, path, sha)


def _manifest_line(path: str, entry: dict) -> bytes:
    return json.dumps([path, entry], sort_keys=True, ensure_ascii=False).encode() + b"\n"


def manifest_sha256(inventory: dict[str, dict]) -> str:
    """The digest archive() returns, recomputed from file_inventory() (same walk order)."""
    sha = hashlib.sha256()
    for path, entry in inventory.items():
        sha.update(_manifest_line(path, entry))
    return sha.hexdigest()


def _volume_tar(container, name: str) -> Iterator[bytes]:
    """The engine's tar of the mounted volume, members named ./relative/path."""
    try:
        chunks, _ = container.get_archive(f"{SOURCE}/.", chunk_size=CHUNK)
        yield from chunks
    except _ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot read through the engine: {exc}") from None


class _Meter:
    """Calls progress(bytes so far) every PROGRESS_EVERY bytes, and once at the end."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.done = self.reported = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.progress and self.done - self.reported >= PROGRESS_EVERY:
            self.progress(self.done)
            self.reported = self.done

    def finish(self) -> None:
        if self.progress:
            self.progress(self.done)


def _tee(chunks: Iterator[bytes], sink: ArtifactWriter, progress: Progress) -> Iterator[bytes]:
    meter = _Meter(progress)
    for chunk in chunks:
        sink.write(chunk)
        meter.add(len(chunk))
        yield chunk
    meter.finish()


def archive(
    engine: docker.DockerClient,
    name: str,
    helper_image: str,
    out_dir: Path,
    backup_id: str,
    codec: Codec,
    progress: Progress = None,
    stop_running: bool = False,
) -> dict:
    """Write out_dir/<name>_<backup_id>.tar[.zst][.age]; returns its record and counts."""
    check(engine, name)  # the engine would silently create a missing volume on mount
    guard = SafetyFilter()
    manifest = hashlib.sha256()
    with (
        _quiesced(engine, name, stop_running),
        _helper(engine, helper_image, name, writable=False, command=None) as helper,
        ArtifactWriter(Path(out_dir) / f"{name}_{backup_id}.tar", codec) as writer,
    ):
        raw = io.BufferedReader(ChunkStream(_tee(_volume_tar(helper, name), writer, progress)))
        try:
            with open_stream(raw) as tar:
                for path, entry in _entries(tar, guard):
                    manifest.update(_manifest_line(path, entry))
            guard.recheck_links()
        except UnsafeArchive as exc:
            raise TargetError(f"volume:{name}", f"a restore would refuse it: {exc}") from None
        while raw.read(CHUNK):  # the end-of-archive blocks belong in the artifact too
            pass
        record = writer.commit()
    return {
        "artifacts": [{**record, "kind": "volume", "source": name}],
        **guard.counts,
        "manifest_sha256": manifest.hexdigest(),
    }


def _ensure_volume(engine: docker.DockerClient, name: str, labels: dict | None) -> bool:
    """Create the volume if it is gone (after `compose down -v`); True if created."""
    try:
        engine.volumes.get(name)
        return False
    except NotFound:
        engine.volumes.create(name=name, labels=labels or {})
        return True


def _wipe_command(root: dict | None) -> list[str]:
    """Empty the volume (dotfiles too) and give its root the archived owner and mode."""
    script = f"find {TARGET} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +"
    if root:
        owner, mode = f"{root['uid']}:{root['gid']}", f"{root['mode']:o}"
        script += f" && chown {owner} {TARGET} && chmod {mode} {TARGET}"
    return ["sh", "-c", script]


def _run(container, name: str) -> None:
    container.start()
    status = container.wait(timeout=HELPER_TIMEOUT).get("StatusCode")
    if status != 0:
        tail = container.logs().decode(errors="replace")[-500:]
        raise TargetError(f"volume:{name}", f"helper exited with {status}: {tail}")


def _member_blocks(member: tarfile.TarInfo, path: str) -> bytes:
    """A fresh header: normalized names, and of the source's PAX fields only xattrs."""
    member.name = path
    if member.islnk():
        member.linkname = normalize(member.linkname)
    if member.issparse():
        member.type = tarfile.REGTYPE  # extractfile() gives it back expanded
    member.pax_headers = {
        k: v for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")
    }
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _safe_tar(
    artifact: Path, identity_file: Path | None, max_unpacked_bytes: int | None, progress: Progress
) -> Iterator[bytes]:
    """The artifact's members re-emitted as a tar stream, each checked before it is sent."""
    guard = SafetyFilter(max_unpacked_bytes)
    meter = _Meter(progress)
    with open_plain(artifact, identity_file) as raw, open_stream(raw) as tar:
        for member, path in safe_members(tar, guard):
            yield _member_blocks(member, path)
            if not member.isreg():
                continue
            src = tar.extractfile(member)
            while chunk := src.read(CHUNK):
                yield chunk
            yield b"\0" * (-member.size % tarfile.BLOCKSIZE)
            meter.add(member.size)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
    meter.finish()


def restore(
    engine: docker.DockerClient,
    name: str,
    artifact: Path,
    helper_image: str,
    identity_file: Path | None = None,
    progress: Progress = None,
    max_unpacked_bytes: int | None = None,
    labels: dict | None = None,
    stop_running: bool = False,
) -> dict:
    """Replace the volume's content with the artifact's (creating the volume if missing)."""
    summary = scan(artifact, identity_file, max_unpacked_bytes)  # before anything is touched
    try:
        created = _ensure_volume(engine, name, labels)
    except _ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot create: {exc}") from None
    with (
        _quiesced(engine, name, stop_running),
        _helper(
            engine, helper_image, name, writable=True, command=_wipe_command(summary["root"])
        ) as helper,
    ):
        try:
            _run(helper, name)
        except _ENGINE_ERRORS as exc:
            raise TargetError(f"volume:{name}", f"cannot empty the volume: {exc}") from None
        try:
            stream = _safe_tar(artifact, identity_file, max_unpacked_bytes, progress)
            helper.put_archive(TARGET, stream)
        except (*_ENGINE_ERRORS, UnsafeArchive, CorruptArtifact, OSError) as exc:
            raise TargetError(
                f"volume:{name}", f"restore failed part-way, the volume is incomplete: {exc}"
            ) from exc
    counts = {k: summary[k] for k in COUNTS}
    return {"volume": name, "created": created, **counts}


def file_inventory(engine: docker.DockerClient, name: str, helper_image: str) -> dict[str, dict]:
    """Every path of the volume -> type, mode, owner, mtime, size and sha256 or link target."""
    check(engine, name)
    with _helper(engine, helper_image, name, writable=False, command=None) as helper:
        raw = io.BufferedReader(ChunkStream(_volume_tar(helper, name)), CHUNK)
        with open_stream(raw) as tar:
            return dict(_entries(tar, None))
