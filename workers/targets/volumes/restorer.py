"""A volume's restore: emptied by a helper, then filled from the artifact, every member
re-emitted only after the safety filter judged it."""

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
from workers.targets.volumes.engine import (
    ENGINE_ERRORS,
    TARGET,
    ensure_volume,
    helper_container,
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
) -> dict:
    """Replace the volume's content with the artifact's (creating the volume if missing)."""
    summary = scan(artifact, identity_file, max_unpacked_bytes)  # before anything is touched
    try:
        created = ensure_volume(engine, name, labels)
    except ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot create: {exc}") from None
    with (
        quiesced(engine, name, stop_running),
        helper_container(
            engine, helper_image, name, writable=True, command=_wipe_command(summary["root"])
        ) as helper,
    ):
        try:
            run_helper(helper, name)
        except ENGINE_ERRORS as exc:
            raise TargetError(f"volume:{name}", f"cannot empty the volume: {exc}") from None
        try:
            stream = _safe_tar(artifact, identity_file, max_unpacked_bytes, progress)
            helper.put_archive(TARGET, stream)
        except (*ENGINE_ERRORS, UnsafeArchive, CorruptArtifact, OSError) as exc:
            raise TargetError(
                f"volume:{name}", f"restore failed part-way, the volume is incomplete: {exc}"
            ) from exc
    counts = {k: summary[k] for k in COUNTS}
    return {"volume": name, "created": created, **counts}
