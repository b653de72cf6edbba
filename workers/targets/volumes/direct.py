"""A local volume read straight from its mountpoint, when this process can reach it.

Through the engine, a volume is listed by a helper container and read as a tar streamed
by dockerd over its socket: on the bench's uploads (200 MB) that stream alone took longer
than `tar | zstd` took for the whole job.  When the worker runs on the engine's host (or
mounts /var/lib/docker/volumes at the same path, read-only) and the volume has the local
driver, its Mountpoint is a directory this process can read: the listing is a walk of
lstat() calls and each new or changed file is read with one open().

Every path is opened relative to its parent directory's descriptor with O_NOFOLLOW, so a
symlink planted in the volume, or swapped in for a directory mid-backup, never leads
outside it; what was opened is checked against the listing (inode, size, mtime) before
a byte of it is used.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from workers.store import jsonlines
from workers.targets.tar_safety import ROOT
from workers.targets.volumes import index as vi

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CAPABILITY = "security.capability"
_KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


def readable_root(volume: dict) -> Path | None:
    """The volume's directory (as inspect_volume describes it) if this process can read it
    in place: the local driver without options only.  A local volume with options (a bind
    of another directory, NFS, CIFS, tmpfs) is mounted at its Mountpoint only while a
    container uses it; otherwise that directory is an empty stand-in, which read in place
    would be backed up as an empty volume (and a restore there would be hidden by the
    mount): such a volume goes through the engine, which mounts it."""
    if volume["driver"] != "local" or volume["driver_options"] or not volume["mountpoint"]:
        return None
    return _openable(volume["mountpoint"])


def _openable(path: str) -> Path | None:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None
    os.close(fd)
    return Path(path)


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _record(path: str, info: os.stat_result, target: str) -> list:
    kind = _KINDS.get(stat.S_IFMT(info.st_mode))
    if kind is None:
        raise vi.Unlisted(f"{path!r}: not a file, directory or symlink")
    size = info.st_size if kind == "file" else 0
    return [path, kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, size,
            info.st_nlink, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, target]  # fmt: skip


def _walk(dir_fd: int, prefix: str) -> Iterator[list]:
    """Entries under an open directory, depth first with names in byte order: the walk
    order the index and the engine use."""
    with os.scandir(dir_fd) as entries:
        names = sorted(os.fsencode(e.name) for e in entries)
    for raw in names:
        path = f"{prefix}/{_name(raw)}" if prefix else _name(raw)
        info = os.lstat(raw, dir_fd=dir_fd)
        target = _name(os.readlink(raw, dir_fd=dir_fd)) if stat.S_ISLNK(info.st_mode) else ""
        yield _record(path, info, target)
        if stat.S_ISDIR(info.st_mode):
            child = os.open(raw, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                yield from _walk(child, path)
            finally:
                os.close(child)


def _parse(line: bytes, started: int) -> vi.Listed:
    path, kind, mode, uid, gid, size, nlink, ino, mtime_ns, ctime_ns, target = jsonlines.loads(line)
    mtime, ctime = mtime_ns // 10**9, ctime_ns // 10**9
    return vi.Listed(
        path, kind, mode, uid, gid, size, mtime, nlink, ino,
        (ino, size, mtime_ns, ctime_ns), max(ctime, mtime) >= started - vi.RACY_S, target,
    )  # fmt: skip


def list_volume(root: Path, spool: Path) -> vi.Listing:
    """The walk of the volume, spooled (one JSON line per entry) so it can be re-read."""
    started = int(time.time())
    root_fd = os.open(root, _DIR_FLAGS)
    count = 0
    try:
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for entries in [_record(ROOT, os.fstat(root_fd), "")], _walk(root_fd, ""):
                for entry in entries:
                    out.write(jsonlines.dumps(entry) + b"\n")
                    count += 1
    finally:
        os.close(root_fd)
    return vi.Listing(spool, started, count, _parse)


class DirStack:
    """Directories open from a root down to the last one asked for, each component opened
    below its parent's descriptor without following a symlink.  Paths come in walk order,
    so the next one shares most of the open directories with the last."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self._open: list[tuple[str, int]] = []  # (name, descriptor) from the root down

    def fd(self, path: str) -> int:
        """The open directory at `path` (ROOT: the root)."""
        names = [] if path == ROOT else path.split("/")
        shared = 0
        while shared < min(len(names), len(self._open)) and self._open[shared][0] == names[shared]:
            shared += 1
        self._close_below(shared)
        for name in names[shared:]:
            fd = self._open[-1][1] if self._open else self.root_fd
            self._open.append((name, os.open(os.fsencode(name), _DIR_FLAGS, dir_fd=fd)))
        return self._open[-1][1] if self._open else self.root_fd

    def _close_below(self, depth: int) -> None:
        while len(self._open) > depth:
            os.close(self._open.pop()[1])

    def close(self) -> None:
        """Release every descriptor (again: a no-op)."""
        self._close_below(0)
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


class DirectFetcher:
    """New and changed entries read from the mountpoint; the same answers as the engine's
    fetcher: the entry's xattrs (as tar PAX fields) and, for a file, its open data (which
    the caller closes)."""

    def __init__(self, root: Path) -> None:
        self.dirs = DirStack(root)
        self.calls = 0  # through the engine: none
        self.opened = 0
        self.files_apart = True  # each file is opened on its own: they may be read at once

    def get(self, step: vi.Step) -> tuple[dict | None, BinaryIO | None]:
        if step.fetch is None:
            return None, None
        item = step.item
        self.opened += 1
        if item.path == ROOT:
            return _xattrs(self.dirs.root_fd), None
        if item.kind == "symlink":
            return {}, None  # the engine's tar stores no xattrs of a symlink
        parent, _, base = item.path.rpartition("/")
        flags = _DIR_FLAGS if item.kind == "dir" else _FILE_FLAGS
        try:
            fd = os.open(os.fsencode(base), flags, dir_fd=self.dirs.fd(parent or ROOT))
        except OSError as exc:
            raise vi.Stale(f"{item.path!r} changed while being backed up ({exc})") from None
        info = os.fstat(fd)
        key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        xattrs = _xattrs(fd)
        if item.kind == "file" and (not stat.S_ISREG(info.st_mode) or key != item.key):
            os.close(fd)
            raise vi.Stale(f"{item.path!r} changed while being backed up")
        if step.kind != "file":
            os.close(fd)
            return xattrs, None
        return xattrs, os.fdopen(fd, "rb", buffering=0)  # the caller's to close

    def close(self) -> None:
        self.dirs.close()


def descend(fd: int, names: list[str]) -> int:
    """The directory `names` below the open directory `fd` (which this takes over), each
    component opened without following a symlink."""
    try:
        for name in names:
            child = os.open(os.fsencode(name), _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_below(root: Path, relative: str) -> BinaryIO:
    """A regular file below `root` opened for reading, no symlink followed on the way."""
    names = [n for n in relative.split("/") if n not in ("", ".")]
    if not names or ".." in names:
        raise OSError(errno.EINVAL, f"not a path below {root}: {relative!r}")
    parent = descend(os.open(root, _DIR_FLAGS), names[:-1])
    try:
        fd = os.open(os.fsencode(names[-1]), _FILE_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{relative!r} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def mount_source(attrs: dict, path: str) -> tuple[Path, str] | None:
    """(host directory, path below it) of a file inside a container, when it lies on a
    local volume or bind mount whose source this process can read."""
    best = None
    for mount in attrs.get("Mounts") or ():
        dest = mount.get("Destination", "").rstrip("/")
        local = mount.get("Type") == "bind" or mount.get("Driver") == "local"
        if local and path.startswith(dest + "/") and (best is None or len(dest) > len(best[1])):
            best = (mount.get("Source"), dest)
    if best is None or _openable(best[0]) is None:  # mounted: the container is running
        return None
    return Path(best[0]), path[len(best[1]) + 1 :]


def _xattrs(fd: int) -> dict:
    """The extended attributes the engine's tar carries (security.capability only), as PAX
    fields, of an open file or directory."""
    try:
        value = os.getxattr(fd, CAPABILITY)
    except OSError:  # ENODATA mostly: no capability set
        return {}
    return {f"SCHILY.xattr.{CAPABILITY}": value.decode("utf-8", "surrogateescape")}
