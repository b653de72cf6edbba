"""Docker named volumes: archive to a tar artifact and restore from one, through the engine API.

The volume is never read from the host's /var/lib/docker: a helper container mounts it,
and the engine's archive API streams a tar of the mount point.  An unencrypted zstd backup
is framed (see volume_index): every member passes the safety filter and is written with a
fresh header, each file's data in a zstd frame of its own, and an index of the frames
closes the artifact.  Given the previous backup's artifact, the helper first lists the
volume (stat only), and files whose inode, size, mtime and ctime are unchanged have their
frames copied verbatim from it: only new and changed files are read through the engine
and compressed, and the new artifact is still a whole tar that restores alone.  Other
codecs tee the engine's stream unchanged into the artifact while parsing it.
Restore re-emits every member that passed the safety filter (normalized names, no stray
PAX fields), so the engine only ever unpacks headers this module has judged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import BinaryIO

import docker
import requests
import urllib3
from docker.errors import DockerException, ImageNotFound, NotFound

from workers.errors import TargetError, UnsafeArchive
from workers.store import parts
from workers.store.codec import (
    CHUNK,
    ArtifactWriter,
    ChunkStream,
    Codec,
    CorruptArtifact,
    open_plain,
)
from workers.targets import tar_header, volume_direct
from workers.targets import volume_index as vi
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
HELPER_TIMEOUT = 3600  # seconds for the wipe step of a restore, or a listing
# What one engine call costs, in bytes read: reading few changed files one call each beats
# reading the whole volume only while calls * FETCH_COST + bytes read < the volume's bytes.
FETCH_COST = 8 << 20
OWN_PART = 64 << 10  # a file this big gets a part file of its own, linked while unchanged
HELD_HEADERS = 1 << 20  # headers held for the next part at most, then written to a shared one
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
# get_archive streams straight from urllib3, whose errors requests does not wrap there
_ENGINE_ERRORS = (DockerException, requests.RequestException, urllib3.exceptions.HTTPError)


def check(engine: docker.DockerClient, name: str) -> dict:
    """What the volume is and which running containers use it."""
    return {**_inspect(engine, name), "in_use_by": _running_users(engine, name)}


def _inspect(engine: docker.DockerClient, name: str) -> dict:
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
    }


def _running_users(engine: docker.DockerClient, name: str) -> list[str]:
    return [c["name"] for c in containers_using_volume(engine, name) if c["running"]]


@contextmanager
def _quiesced(engine: docker.DockerClient, name: str, stop_running: bool) -> Iterator[list]:
    """No running container writes the volume inside the block: refuse, or stop and restart
    (the block gets the containers stopped)."""
    users = _running_users(engine, name)
    if users and not stop_running:
        raise TargetError(
            f"volume:{name}",
            f"in use by running container(s) {', '.join(users)}; a live copy of a database "
            "is not consistent: stop them first or pass stop_running=True",
        )
    stopped = stop_containers(engine, users)
    try:
        yield stopped
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
        sha.update(_manifest_line(path, entry))
    return sha.hexdigest()


def _volume_tar(container, name: str, path: str = ROOT) -> Iterator[bytes]:
    """The engine's tar of the mounted volume (members ./relative/path), or of one path in
    it (members named from its last component)."""
    try:
        chunks, _ = container.get_archive(f"{SOURCE}/{path}", chunk_size=CHUNK)
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
    previous: Path | None = None,
    direct: bool = True,
) -> dict:
    """Write out_dir/<name>_<backup_id>.tar[.zst.parts|.zst.age|...]; its record and counts.

    `previous`: this volume's artifact in the newest verified backup, whose unchanged
    files' parts are linked (parted artifacts only); the result tells what was reused.
    `direct`: read the volume in place when this process can (volume_direct), else (or
    if that fails) through the engine."""
    volume = _inspect(engine, name)  # the engine would silently create a missing one on mount
    framed = codec.compression == "zstd" and not codec.encrypted
    root = volume_direct.readable_root(volume["driver"], volume["mountpoint"])
    out_dir = Path(out_dir)
    with _quiesced(engine, name, stop_running) as stopped:
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
            with _helper(engine, helper_image, name, writable=False, command=command) as helper:
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
    prev = _Previous(previous) if previous else None
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
        chunks = _tee(_volume_tar(helper, job.name), writer, job.progress)
        raw = io.BufferedReader(ChunkStream(chunks))
        with open_stream(raw) as tar:
            for path, entry in _entries(tar, guard):
                manifest.update(_manifest_line(path, entry))
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
        _run(helper, name)
        chunks, _ = helper.get_archive(vi.LIST_DIR, chunk_size=CHUNK)
        listing = vi.fetch_listing(chunks, tmp / "listing")
        for _ in listing:  # parses every line once: a bad one is found before anything is written
            pass
        return listing, None
    except (vi.Unlisted, TargetError, tarfile.TarError, *_ENGINE_ERRORS) as exc:
        return None, f"not listed ({exc}): read in full, nothing reusable next time"


class _Previous:
    """The previous backup's parted artifact: its parts, index, and frames read on demand."""

    def __init__(self, path: Path) -> None:
        self.dir = path
        self.parts = {part.name: part for part in parts.read_list(path)}
        if not self.parts:
            raise vi.Stale("the previous artifact has no parts")
        self._fds: dict[str, int] = {}

    def index(self) -> Iterator[list]:
        return vi.read_index(self._fd(list(self.parts)[-1]))

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            if name not in self.parts:
                raise vi.Stale(f"the index names a part {name!r} the artifact does not list")
            self._fds[name] = os.open(self.dir / name, os.O_RDONLY)
        return self._fds[name]

    def frames(self, frame: list) -> Iterator[bytes]:
        name, offset, length = frame[:3]
        return vi.pread_chunks(self._fd(name), offset, length)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)


class _Composer:
    """Members appended to a parted artifact and its index, each judged by the safety filter.

    A file of OWN_PART bytes or more gets a part of its own: the headers held since the
    last part (directories, links, empty files), its own, then its data.  When all of
    those are unchanged since the previous backup, that part is hard-linked: neither read
    nor copied.  Smaller files share parts between those."""

    def __init__(
        self,
        writer: parts.PartedWriter,
        started: int | None,
        progress: Progress,
        side_by_side: bool = False,
    ) -> None:
        """`side_by_side`: new files' parts are written by the writer's threads (their data
        must then be files of their own, not a stream read in order)."""
        self.writer, self.guard, self.meter = writer, SafetyFilter(), _Meter(progress)
        self.index = vi.IndexSpool(writer.partial.parent, started)
        self.manifest = hashlib.sha256()
        self.side_by_side = side_by_side
        self.held = b""  # headers not written yet: they open the next part
        self.pending: deque[list] = deque()  # entries, recorded in order once their data is in
        # reused: not read again (linked, or a small file's frame copied)
        self.stats = {"reused_files": 0, "reused_bytes": 0, "linked_files": 0, "read_bytes": 0}

    def add(
        self,
        info: tarfile.TarInfo,
        key: list | None,
        data: BinaryIO | None = None,
        reuse: list | None = None,
        previous: _Previous | None = None,
    ) -> None:
        path = self.guard.check(info)
        header = tar_header.header(info)
        frame, sha, prefix_sha = None, None, None
        if not (info.isreg() and info.size):  # a header alone: held for the next part
            self._hold(header)
            sha = EMPTY_SHA256 if info.isreg() else None
        elif info.size >= OWN_PART:
            prefix, self.held = self.held + header, b""
            prefix_sha = hashlib.sha256(prefix).hexdigest()
            self.writer.end_part()
            frame = self._link(prefix, prefix_sha, info.size, reuse, previous)
            if frame is None and not reuse:
                frame = self.writer.own_part(prefix, data, info.size, not self.side_by_side)
                self.stats["read_bytes"] += info.size
            elif frame is None:  # the previous part holds other headers: its data is copied
                self._write(prefix)
                frame, sha = self._data(data, info.size, path, reuse, previous)
                frame.append(prefix_sha)
                self.writer.end_part()
        else:
            self._write(self.held + header)
            self.held = b""
            frame, sha = self._data(data, info.size, path, reuse, previous)
        self.pending.append([info, path, key, frame, reuse[4] if reuse else sha, prefix_sha])
        self._record(block=False)

    def _record(self, block: bool) -> None:
        """Index and manifest lines of the entries whose data is written, in order."""
        while self.pending:
            info, path, key, frame, sha, prefix_sha = self.pending[0]
            if isinstance(frame, Future):
                if not (block or frame.done()):
                    return
                part, frame, sha = frame.result()
                frame += [True, prefix_sha]
                self.meter.add(part.plain_bytes)
            self.pending.popleft()
            entry = _entry(info, path, sha)
            self.manifest.update(_manifest_line(path, entry))
            self.index.add([path, entry["type"], key, frame, sha, info.pax_headers or None])

    def _hold(self, header: bytes) -> None:
        self.held += header
        if len(self.held) >= HELD_HEADERS:
            self._write(self.held)
            self.held = b""

    def _data(
        self,
        src: BinaryIO | None,
        size: int,
        path: str,
        reuse: list | None,
        previous: _Previous | None,
    ) -> tuple[list, str | None]:
        if reuse:
            return self._copy(previous, reuse, size), None
        return self._compress(src, size, path)

    def _write(self, data: bytes) -> None:
        self.writer.write(data)
        self.meter.add(len(data))

    def _link(
        self,
        prefix: bytes,
        prefix_sha: str,
        size: int,
        reuse: list | None,
        previous: _Previous | None,
    ) -> list | None:
        """The previous backup's own part of this file, linked if it holds these very headers
        (its own, and those of the entries held before it) and data."""
        if not reuse or not reuse[3][3] or reuse[3][4] != prefix_sha:
            return None  # a header changed (a directory's mtime, say): copy the data frame
        part = previous.parts.get(reuse[3][0])
        if part is None or part.plain_bytes != len(prefix) + _padded(size):
            return None
        name = self.writer.link_part(previous.dir, part)
        self.meter.add(part.plain_bytes)
        self.stats["linked_files"] += 1
        self.stats["reused_files"] += 1
        self.stats["reused_bytes"] += size
        return [name, *reuse[3][1:]]

    def _compress(self, src: BinaryIO, size: int, path: str) -> tuple[list, str]:
        start, sha, done = self.writer.end_frame(), hashlib.sha256(), 0
        while done < size and (chunk := src.read(min(CHUNK, size - done))):
            self._write(chunk)
            sha.update(chunk)
            done += len(chunk)
        src.close()
        if done != size:
            raise vi.Stale(f"{path!r}: {done} of {size} bytes could be read")
        self._write(b"\0" * (-size % tarfile.BLOCKSIZE))
        self.stats["read_bytes"] += size
        return self._frame(start, size), sha.hexdigest()

    def _copy(self, previous: _Previous, old: list, size: int) -> list:
        start = self.writer.end_frame()
        plain = _padded(size)  # checked when the artifact is committed
        self.writer.append_frames(previous.frames(old[3]), plain)
        self.meter.add(plain)
        self.stats["reused_files"] += 1
        self.stats["reused_bytes"] += size
        return self._frame(start, size)

    def _frame(self, start: int, size: int) -> list:
        """[part, offset, length, whether the part is this file's own] of the frame just
        ended."""
        return [self.writer.current_part, start, self.writer.end_frame() - start, size >= OWN_PART]

    def finish(self, name: str) -> dict:
        self._record(block=True)
        self.guard.recheck_links()
        self._write(self.held + b"\0" * (2 * tarfile.BLOCKSIZE))
        offset = self.writer.end_frame()
        self.writer.append_frames(self.index.frames(offset))
        record = self.writer.commit()
        self.meter.finish()
        return {
            "artifacts": [{**record, "kind": "volume", "source": name}],
            **self.guard.counts,
            "manifest_sha256": self.manifest.hexdigest(),
            **self.stats,
        }


def _padded(size: int) -> int:
    return size + (-size % tarfile.BLOCKSIZE)


def _tar_name(path: str) -> str:
    return ROOT if path == ROOT else f"./{path}"


def _xattrs(pax_headers: dict) -> dict:
    return {k: v for k, v in pax_headers.items() if k.startswith("SCHILY.xattr.")}


def _fresh(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """The engine's member as a full archive stores it: ./names, numeric owners, xattrs."""
    member.name = _tar_name(path)
    if member.islnk():
        member.linkname = _tar_name(normalize(member.linkname))
    if member.issparse():
        member.type = tarfile.REGTYPE  # extractfile() gives it back expanded
    member.pax_headers = _xattrs(member.pax_headers)
    member.uname = member.gname = ""
    return member


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
        composer = _Composer(writer, listing.started if listing else None, job.progress)
        raw = io.BufferedReader(ChunkStream(_volume_tar(helper, job.name)), CHUNK)
        with open_stream(raw) as tar:
            for member in tar:
                path = normalize(member.name)
                key = _trusted_key(listed.find(path), member)
                data = tar.extractfile(member) if member.isreg() else None
                composer.add(_fresh(member, path), key, data)
        return composer.finish(job.name)


_TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}


def _listed_header(step: vi.Step, xattrs: dict | None) -> tarfile.TarInfo:
    """The header a full archive would hold, from the listing (xattrs: read now or index)."""
    item = step.item
    info = tarfile.TarInfo(_tar_name(item.path))
    info.type = tarfile.LNKTYPE if step.kind == "hardlink" else _TYPES[item.kind]
    info.mode, info.uid, info.gid, info.mtime = item.mode, item.uid, item.gid, item.mtime
    info.size = item.size if step.kind == "file" else 0
    info.linkname = _tar_name(step.linkname) if step.kind == "hardlink" else step.linkname
    info.uname = info.gname = ""
    info.pax_headers = dict(step.xattrs or {}) if xattrs is None else xattrs
    return info


class _Fetcher:
    """Members read through the engine: one call per new directory or changed file."""

    def __init__(self, helper, name: str) -> None:
        self.helper, self.name = helper, name
        self.unit: str | None = None
        self.tar: tarfile.TarFile | None = None
        self.calls = 0
        self.files_apart = False  # members of one stream: each read before the next

    def get(self, step: vi.Step) -> tuple[dict | None, BinaryIO | None]:
        """The entry's xattrs (as tar PAX fields) and, for a file, its data."""
        if step.fetch is None:
            return None, None
        if step.fetch != self.unit:
            self.close()
            self.unit, self.calls = step.fetch, self.calls + 1
            chunks = _volume_tar(self.helper, self.name, step.fetch)
            self.tar = tarfile.open(
                fileobj=io.BufferedReader(ChunkStream(chunks), CHUNK), mode="r|"
            )
        member = self.tar.next()
        parent = step.fetch.rpartition("/")[0]
        path = None if member is None else "/".join(filter(None, [parent, normalize(member.name)]))
        item = step.item
        if path != item.path or not _same_kind(step, member):
            raise vi.Stale(f"{item.path!r} changed while being backed up")
        data = self.tar.extractfile(member) if step.kind == "file" else None
        return _xattrs(member.pax_headers), data

    def close(self) -> None:
        """The previous call's tar must hold nothing more than the listing said."""
        if self.tar is not None:
            extra = self.tar.next()
            self.tar.close()
            self.tar = None
            if extra is not None:
                raise vi.Stale(f"{extra.name!r} appeared while being backed up")


def _same_kind(step: vi.Step, member: tarfile.TarInfo) -> bool:
    """Whether the engine streamed what the listing said (a hard link may come as a file)."""
    if step.kind == "file":
        return member.isreg() and member.size == step.item.size
    if step.kind == "hardlink":
        return member.isreg() or member.islnk()
    if step.kind == "symlink":
        return member.issym() and member.linkname == step.item.target
    return member.isdir()


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
    prev = _Previous(job.previous)
    try:
        if not _worth_it(vi.plan(listing, prev.index())):
            return None
        return _planned(job, listing, prev, _Fetcher(helper, job.name))
    finally:
        prev.close()


def _planned(job: _Job, listing: vi.Listing, prev: _Previous | None, fetcher) -> dict:
    """The artifact as the plan says: entries the fetcher reads, parts and frames reused."""
    with parts.PartedWriter(job.artifact, job.codec, job.decode) as writer:
        composer = _Composer(writer, listing.started, job.progress, fetcher.files_apart)
        for step in vi.plan(listing, prev.index() if prev else ()):
            xattrs, data = fetcher.get(step)
            info = _listed_header(step, xattrs)
            composer.add(info, _index_key(step.item), data, step.reuse, prev)
        fetcher.close()
        return {**composer.finish(job.name), "engine_calls": fetcher.calls}


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
    member.pax_headers = _xattrs(member.pax_headers)
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
