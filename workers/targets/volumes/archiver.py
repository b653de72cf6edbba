"""A volume's archive: read in place or through the engine, in full or reusing the
previous backup's unchanged parts, into one artifact that restores alone."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from workers.errors import TargetError, UnsafeArchive
from workers.store import parts
from workers.store.codec import CHUNK, ArtifactWriter, ChunkStream, Codec, CorruptArtifact
from workers.targets.tar_safety import SafetyFilter, normalize, open_stream
from workers.targets.volumes import direct as volume_direct
from workers.targets.volumes import index as vi
from workers.targets.volumes.composer import Composer
from workers.targets.volumes.engine import (
    ENGINE_ERRORS,
    helper_container,
    inspect_volume,
    quiesced,
    run_helper,
    volume_tar,
)
from workers.targets.volumes.fetcher import EngineFetcher
from workers.targets.volumes.inventory import inventory_entries, manifest_line
from workers.targets.volumes.members import fresh_header, listed_header
from workers.targets.volumes.meter import Meter, Progress
from workers.targets.volumes.previous import Previous

# What one engine call costs, in bytes read: reading few changed files one call each beats
# reading the whole volume only while calls * FETCH_COST + bytes read < the volume's bytes.
FETCH_COST = 8 << 20


def _tee(chunks: Iterator[bytes], sink: ArtifactWriter, progress: Progress) -> Iterator[bytes]:
    meter = Meter(progress)
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
    previous: Path | None = None,
    direct: bool = True,
) -> dict:
    """Write out_dir/<name>_<backup_id>.tar[.zst.parts|.zst.age|...]; its record and counts.

    `previous`: this volume's artifact in the newest verified backup, whose unchanged
    files' parts are linked (parted artifacts only); the result tells what was reused.
    `direct`: read the volume in place when this process can (volumes/direct.py), else (or
    if that fails) through the engine."""
    volume = inspect_volume(engine, name)  # the engine would silently create a missing one on mount
    framed = codec.compression == "zstd" and not codec.encrypted
    root = volume_direct.readable_root(volume)
    out_dir = Path(out_dir)
    with quiesced(engine, name, stop_running) as stopped:
        # Services stopped for the copy wait for it: their parts are checked by the verify
        # step after they restart, not decoded meanwhile.
        job = _Job(name, out_dir, backup_id, codec, progress, previous, decode=not stopped)
        try:
            note = None
            if framed and direct and root:
                result, note = _archive_direct(root, job)
                if result:
                    return result
            command = ["sh", "-c", vi.LIST_SCRIPT] if framed else None
            with helper_container(
                engine, helper_image, name, writable=False, command=command
            ) as helper:
                if not framed:
                    return _archive_stream(helper, job)
                result = _archive_framed(helper, job)
                return {**result, "note": "; ".join(filter(None, [note, result["note"]])) or None}
        except UnsafeArchive as exc:
            raise TargetError(f"volume:{name}", f"a restore would refuse it: {exc}") from None


_READ_ERRORS = (vi.Stale, vi.Unlisted, CorruptArtifact, OSError, tarfile.TarError)


@dataclass(frozen=True)
class _Job:
    """One volume's archive: what every way of writing it needs."""

    name: str
    out_dir: Path
    backup_id: str
    codec: Codec
    progress: Progress
    previous: Path | None
    decode: bool  # parts decoded as they are written (see parts.PartedWriter)

    @property
    def artifact(self) -> Path:
        """The artifact's path without the codec's suffix."""
        return self.out_dir / f"{self.name}_{self.backup_id}.tar"

    def timed(self, result: dict, note: str | None, start: float, listed: float) -> dict:
        seconds = {"list": round(listed - start, 3), "archive": round(time.monotonic() - listed, 3)}
        previous = self.previous.name if self.previous else None
        return {**result, "previous": previous, "note": note, "seconds": seconds}


def _archive_direct(root: Path, job: _Job) -> tuple[dict | None, str | None]:
    """The volume read in place; (None, why) when it cannot be, to go through the engine."""
    job.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=job.out_dir, prefix=".list-") as tmp:
        start = time.monotonic()
        try:
            listing = volume_direct.list_volume(root, Path(tmp) / "listing")
        except (vi.Unlisted, OSError) as exc:
            return None, f"not read in place ({exc})"
        listed, note, result = time.monotonic(), None, None
        if job.previous:
            try:
                result = _read_in_place(root, job, listing, job.previous)
            except _READ_ERRORS as exc:
                note = f"previous artifact not reused ({exc}): read in full"
        if result is None:
            try:
                result = _read_in_place(root, job, listing, None)
            except _READ_ERRORS as exc:
                return None, f"not read in place ({exc})"
    return {**job.timed(result, note, start, listed), "read": "in place"}, None


def _read_in_place(root: Path, job: _Job, listing: vi.Listing, previous: Path | None) -> dict:
    prev = Previous(previous) if previous else None
    fetcher = volume_direct.DirectFetcher(root)
    try:
        result = _planned(job, listing, prev, fetcher)
        return {**result, "opened": fetcher.opened}
    finally:
        fetcher.close()
        if prev:
            prev.close()


def _archive_stream(helper, job: _Job) -> dict:
    """The engine's tar, unchanged, into the artifact (codecs without addressable frames)."""
    guard = SafetyFilter()
    manifest = hashlib.sha256()
    with ArtifactWriter(job.artifact, job.codec) as writer:
        chunks = _tee(volume_tar(helper, job.name), writer, job.progress)
        raw = io.BufferedReader(ChunkStream(chunks))
        with open_stream(raw) as tar:
            for path, entry in inventory_entries(tar, guard):
                manifest.update(manifest_line(path, entry))
        guard.recheck_links()
        while raw.read(CHUNK):  # the end-of-archive blocks belong in the artifact too
            pass
        record = writer.commit()
    return {
        "artifacts": [{**record, "kind": "volume", "source": job.name}],
        **guard.counts,
        "manifest_sha256": manifest.hexdigest(),
    }


def _archive_framed(helper, job: _Job) -> dict:
    """Listed by a helper container, read through the engine."""
    job.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=job.out_dir, prefix=".list-") as tmp:
        start = time.monotonic()
        listing, note = _list(helper, job.name, Path(tmp))
        listed = time.monotonic()
        result = None
        if listing and job.previous:
            try:
                result = _incremental(helper, job, listing)
                note = None if result else "too much changed: read in full"
            except _READ_ERRORS as exc:
                note = f"previous artifact not reused ({exc}): read in full"
        if result is None:
            result = _full(helper, job, listing)
    return job.timed(result, note, start, listed)


def _list(helper, name: str, tmp: Path) -> tuple[vi.Listing | None, str | None]:
    """The helper's listing of the volume, validated; None (and why) if it cannot be had."""
    try:
        run_helper(helper, name)
        chunks, _ = helper.get_archive(vi.LIST_DIR, chunk_size=CHUNK)
        listing = vi.fetch_listing(chunks, tmp / "listing")
        for _ in listing:  # parses every line once: a bad one is found before anything is written
            pass
        return listing, None
    except (vi.Unlisted, TargetError, tarfile.TarError, *ENGINE_ERRORS) as exc:
        return None, f"not listed ({exc}): read in full, nothing reusable next time"


def _trusted_key(item: vi.Listed | None, member: tarfile.TarInfo) -> list | None:
    """The listed key, if it surely describes what the engine just streamed of the path."""
    if item is None or item.racy or int(member.mtime) != item.mtime:
        return None
    if member.isreg() and (item.kind != "file" or member.size != item.size):
        return None
    return list(item.key)


def _full(helper, job: _Job, listing: vi.Listing | None) -> dict:
    """Every member from the engine's tar of the volume, each file's data compressed anew."""
    listed = vi.Cursor(listing or (), lambda item: item.path)
    with parts.PartedWriter(job.artifact, job.codec, job.decode) as writer:
        composer = Composer(writer, listing.started if listing else None, job.progress)
        raw = io.BufferedReader(ChunkStream(volume_tar(helper, job.name)), CHUNK)
        with open_stream(raw) as tar:
            for member in tar:
                path = normalize(member.name)
                key = _trusted_key(listed.find(path), member)
                data = tar.extractfile(member) if member.isreg() else None
                composer.add(fresh_header(member, path), key, data)
        return composer.finish(job.name)


def _index_key(item: vi.Listed) -> list | None:
    return None if item.racy else list(item.key)


def _worth_it(steps: Iterator[vi.Step]) -> bool:
    total = read = calls = 0
    unit = None
    for step in steps:
        if step.kind == "file":
            total += step.item.size
            read += step.item.size if step.fetch else 0
        if step.fetch and step.fetch != unit:
            calls += 1
        unit = step.fetch
    return calls * FETCH_COST + read < total


def _incremental(helper, job: _Job, listing: vi.Listing) -> dict | None:
    """New and changed files read through the engine, the others' parts linked (or their
    frames copied); None when reading the whole volume would cost less."""
    prev = Previous(job.previous)
    try:
        if not _worth_it(vi.plan(listing, prev.index())):
            return None
        return _planned(job, listing, prev, EngineFetcher(helper, job.name))
    finally:
        prev.close()


def _planned(job: _Job, listing: vi.Listing, prev: Previous | None, fetcher) -> dict:
    """The artifact as the plan says: entries the fetcher reads, parts and frames reused."""
    with parts.PartedWriter(job.artifact, job.codec, job.decode) as writer:
        composer = Composer(writer, listing.started, job.progress, fetcher.files_apart)
        for step in vi.plan(listing, prev.index() if prev else ()):
            xattrs, data = fetcher.get(step)
            info = listed_header(step, xattrs)
            composer.add(info, _index_key(step.item), data, step.reuse, prev)
        fetcher.close()
        return {**composer.finish(job.name), "engine_calls": fetcher.calls}
