"""Which tar members may be unpacked into a volume, decided one member at a time.

A member is refused (UnsafeArchive) when it would land or point outside the volume root:
absolute names, `..` components, symlinks leaving the root, hard links to anything not
already unpacked, members written through a symlink; also device nodes and fifos, and an
archive that unpacks to more than a size limit.  The checks only read headers, so they run
while streaming: `scan()` validates a whole artifact before a restore touches anything.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from workers.errors import UnsafeArchive
from workers.store.codec import CHUNK, CorruptArtifact, open_plain

ROOT = "."
COUNTS = ("files", "dirs", "symlinks", "hardlinks", "bytes")
_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit


def normalize(name: str) -> str:
    """A member name relative to the volume root ("." for the root itself); refuses escapes."""
    if name.startswith("/"):
        raise UnsafeArchive(f"{name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{name!r}: '..' component")
    return "/".join(parts) or ROOT


def _escapes(link_path: str, target: str, links: dict[str, str]) -> bool:
    """Whether a symlink at link_path, resolved through the symlinks known so far, leaves root."""
    current = [p for p in posixpath.dirname(link_path).split("/") if p]
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        inner = links.get("/".join([*current, part]))
        if inner is None:
            current.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or inner.startswith("/"):
            return True  # a loop cannot be judged safe; an absolute target is outside
        pending = inner.split("/") + pending
    return False


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    if member.isdev():
        raise UnsafeArchive(f"{member.name!r}: device node or fifo")
    raise UnsafeArchive(f"{member.name!r}: unsupported member type {member.type!r}")


def check_member(member: tarfile.TarInfo) -> str:
    """The checks that need no other member; returns the normalized path."""
    path = normalize(member.name)
    kind = _kind(member)
    if kind == "symlink":
        target = member.linkname
        if not target or target.startswith("/"):
            raise UnsafeArchive(f"{path!r}: symlink to absolute path {target!r}")
        if _escapes(path, target, {}):
            raise UnsafeArchive(f"{path!r}: symlink {target!r} points outside the volume")
    elif kind == "hardlink":
        normalize(member.linkname)
    return path


class SafetyFilter:
    """Checks members in archive order, remembering what earlier members created."""

    def __init__(self, max_unpacked_bytes: int | None = None) -> None:
        self.max_unpacked_bytes = max_unpacked_bytes
        self.counts = dict.fromkeys(COUNTS, 0)
        self.root: dict | None = None
        # Hashes, not names: a volume may hold millions of files and memory must stay bounded.
        self._linkable: set[int] = set()
        self._links: dict[str, str] = {}

    def check(self, member: tarfile.TarInfo) -> str:
        """Validate one member against the archive so far; returns its normalized path."""
        path = check_member(member)
        self._check_parents(path)
        kind = _kind(member)
        if kind == "symlink" and _escapes(path, member.linkname, self._links):
            raise UnsafeArchive(f"{path!r}: symlink {member.linkname!r} points outside the volume")
        if kind == "hardlink" and hash(normalize(member.linkname)) not in self._linkable:
            raise UnsafeArchive(f"{path!r}: hard link to {member.linkname!r}, not in the archive")
        self._record(path, kind, member)
        return path

    def _check_parents(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self._links:
                raise UnsafeArchive(f"{path!r}: written through symlink {parent!r}")

    def _record(self, path: str, kind: str, member: tarfile.TarInfo) -> None:
        self._links.pop(path, None)
        if kind == "symlink":
            self._links[path] = member.linkname
        elif kind in ("file", "hardlink"):
            self._linkable.add(hash(path))
        if path == ROOT:
            self.root = {"mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid}
        else:
            self.counts[kind + "s"] += 1
        if kind == "file":
            self.counts["bytes"] += member.size
            limit = self.max_unpacked_bytes
            if limit is not None and self.counts["bytes"] > limit:
                raise UnsafeArchive(f"the archive unpacks to more than {limit} bytes")

    def recheck_links(self) -> None:
        """Symlinks judged with every symlink of the archive (a later one may redirect them)."""
        for path, target in self._links.items():
            if _escapes(path, target, self._links):
                raise UnsafeArchive(f"{path!r}: symlink {target!r} points outside the volume")


@contextmanager
def open_stream(fileobj: BinaryIO) -> Iterator[tarfile.TarFile]:
    """A forward-only tar reader (never seeks, never buffers a member); a damaged tar
    anywhere in the block (a header, or a member's data cut short) is CorruptArtifact."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            yield tar
    except tarfile.TarError as exc:
        raise CorruptArtifact(f"not a readable tar stream: {exc}") from None


def safe_members(
    tar: tarfile.TarFile, guard: SafetyFilter
) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """(member, normalized path) for each member of a stream-mode tar, refusing unsafe ones."""
    for member in tar:
        yield member, guard.check(member)


def _read_through(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Read a member's data: unlike a skip, a read notices data cut short."""
    src = tar.extractfile(member)
    while src.read(CHUNK):
        pass


def scan(
    artifact: Path, identity_file: Path | None = None, max_unpacked_bytes: int | None = None
) -> dict:
    """Read a whole artifact and validate every member without extracting anything."""
    with open_plain(artifact, identity_file) as raw:
        return scan_stream(raw, max_unpacked_bytes)


def scan_stream(raw: BinaryIO, max_unpacked_bytes: int | None = None) -> dict:
    """Validate every member of a plaintext tar stream without extracting anything."""
    guard = SafetyFilter(max_unpacked_bytes)
    with open_stream(raw) as tar:
        members = 0
        for member, _ in safe_members(tar, guard):
            members += 1
            if member.isreg():
                _read_through(tar, member)
    guard.recheck_links()
    return {"members": members, **guard.counts, "root": guard.root}
