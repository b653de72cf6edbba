"""A volume's restore: the artifact checked whole first, then the volume emptied and
filled, in place (unpacker) or through the engine (a helper empties it, and dockerd
unpacks a tar of the members re-emitted after the safety filter judged each)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker

from workers.errors import TargetError, UnsafeArchive
from workers.store.codec import CHUNK, CorruptArtifact, open_plain
from workers.targets.tar_safety import (
    COUNTS,
    SafetyFilter,
    normalize,
    open_stream,
    safe_members,
    scan,
)
from workers.targets.volumes import unpacker
from workers.targets.volumes.engine import (
    ENGINE_ERRORS,
    TARGET,
    ensure_volume,
    helper_container,
    inspect_volume,
    quiesced,
    run_helper,
)
from workers.targets.volumes.members import xattrs_of
from workers.targets.volumes.meter import Meter, Progress


def _wipe_command(root: dict | None) -> list[str]:
    """Empty the volume (dotfiles too) and give its root the archived owner and mode."""
    script = f"find {TARGET} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +"
    if root:
        owner, mode = f"{root['uid']}:{root['gid']}", f"{root['mode']:o}"
        script += f" && chown {owner} {TARGET} && chmod {mode} {TARGET}"
    return ["sh", "-c", script]


def _member_blocks(member: tarfile.TarInfo, path: str) -> bytes:
    """A fresh header: normalized names, and of the source's PAX fields only xattrs."""
    member.name = path
    if member.islnk():
        member.linkname = normalize(member.linkname)
    if member.issparse():
        member.type = tarfile.REGTYPE  # extractfile() gives it back expanded
    member.pax_headers = xattrs_of(member.pax_headers)
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _safe_tar(
    artifact: Path, identity_file: Path | None, max_unpacked_bytes: int | None, progress: Progress
) -> Iterator[bytes]:
    """The artifact's members re-emitted as a tar stream, each checked before it is sent."""
    guard = SafetyFilter(max_unpacked_bytes)
    meter = Meter(progress)
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
    direct: bool = True,
) -> dict:
    """Replace the volume's content with the artifact's (creating the volume if missing).
    `direct`: write the volume in place when this process can (volumes/unpacker.py), else
    through the engine."""
    summary = scan(artifact, identity_file, max_unpacked_bytes)  # before anything is touched
    try:
        created = ensure_volume(engine, name, labels)
    except ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot create: {exc}") from None
    volume = inspect_volume(engine, name)
    root = unpacker.writable_root(volume) if direct else None
    job = (artifact, identity_file, max_unpacked_bytes, progress)
    with quiesced(engine, name, stop_running):
        try:
            if root:
                _in_place(root, *job)
            else:
                _through_engine(engine, name, helper_image, summary["root"], *job)
        except (*ENGINE_ERRORS, UnsafeArchive, CorruptArtifact, OSError) as exc:
            raise TargetError(
                f"volume:{name}", f"restore failed part-way, the volume is incomplete: {exc}"
            ) from exc
    counts = {k: summary[k] for k in COUNTS}
    written = "in place" if root else "through the engine"
    return {"volume": name, "created": created, "written": written, **counts}


def _in_place(
    root: Path,
    artifact: Path,
    identity_file: Path | None,
    max_unpacked_bytes: int | None,
    progress: Progress,
) -> None:
    unpacker.wipe(root)
    guard = SafetyFilter(max_unpacked_bytes)
    with open_plain(artifact, identity_file, ahead=True) as raw, open_stream(raw) as tar:
        unpacker.unpack(root, tar, guard, progress)


def _through_engine(
    engine: docker.DockerClient,
    name: str,
    helper_image: str,
    archived_root: dict | None,
    artifact: Path,
    identity_file: Path | None,
    max_unpacked_bytes: int | None,
    progress: Progress,
) -> None:
    """Emptied by a helper container, then filled by the engine's unpacking of a tar of
    the members the safety filter passed."""
    wipe = _wipe_command(archived_root)
    with helper_container(engine, helper_image, name, writable=True, command=wipe) as helper:
        try:
            run_helper(helper, name)
        except ENGINE_ERRORS as exc:
            raise TargetError(f"volume:{name}", f"cannot empty the volume: {exc}") from None
        stream = _safe_tar(artifact, identity_file, max_unpacked_bytes, progress)
        helper.put_archive(TARGET, stream)
