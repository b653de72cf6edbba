"""What a volume holds, listed without reading a file, and the index of a framed artifact.

A framed volume artifact is an ordinary tar.zst, kept as part files (store.parts) and
written as independent zstd frames: tar headers in small frames, each regular file's data
(with its padding) in a frame of its own, and a big file's header and data in a part of
their own.  Its last part ends with two zstd skippable frames, which every zstd decoder
ignores (so `zstd -dc | tar x` and a restore see a plain tar): the index, then a
fixed-size trailer pointing at it.  The index maps each path to what was listed of it
(inode, size, mtime and ctime in ns) and where its data frame lies, so the next backup
links unchanged files' parts (or copies a small file's frame) instead of reading and
compressing them again.

The listing comes from a helper container (busybox `find` and `stat`), sorted there in
the engine's walk order (names compared component by component), so both the listing
and an index stream through a merge without ever being held in memory.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from workers.store import jsonlines
from workers.store.codec import CHUNK, ChunkStream, CorruptArtifact
from workers.targets.tar_safety import ROOT, normalize

LIST_DIR = "/tmp/xiehe-list"
# Control characters the listing uses as separators; names holding them (or a newline)
# cannot be listed safely, and the volume is archived in full instead.
_SEP, _SLASH = "\x01", "\x02"
LIST_SCRIPT = f"""set -e
mkdir -p {LIST_DIR} && cd /source
date +%s > {LIST_DIR}/a_started
find . -name '*[
{_SEP}{_SLASH}]*' > {LIST_DIR}/b_odd
find . | wc -l > {LIST_DIR}/c_count
find . -exec stat -c '%n{_SEP}%i %h %f %u %g %s %Y %y %Z %z{_SEP}%N' {{}} + |
  awk -F'{_SEP}' '{{k = $1; gsub("/", "{_SLASH}", k); print k "{_SEP}" $0}}' |
  LC_ALL=C sort > {LIST_DIR}/d_list
"""
RACY_S = 1  # a change this close to the listing may share its timestamp: not trusted next time
_S_IFMT, _KINDS = 0o170000, {0o040000: "dir", 0o100000: "file", 0o120000: "symlink"}

INDEX_MAGIC, TRAILER_MAGIC = 0x184D2A5D, 0x184D2A5E  # zstd skippable frame magics
_TRAILER = struct.Struct("<II8sQQ")
_TAG = b"XIEHEIDX"
FORMAT = 2  # 1: frames addressed in a single-file artifact


class Unlisted(Exception):
    """The volume cannot be listed safely (odd names, unexpected types): archive it in full."""


class Stale(Exception):
    """A previous artifact cannot be reused (no index, damaged, or not matching the volume)."""


def walk_key(path: str) -> tuple[bytes, ...]:
    """The engine's walk order: names compared byte-wise, component by component."""
    return () if path == ROOT else tuple(path.encode("utf-8", "surrogateescape").split(b"/"))


@dataclass(slots=True)
class Listed:
    path: str
    kind: str  # dir | file | symlink
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    nlink: int
    ino: int
    key: tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns)
    racy: bool
    target: str = ""


def _ns(seconds: str, human_time: str) -> int:
    """Nanoseconds from %Y and the fraction busybox prints in %y ("HH:MM:SS.nnnnnnnnn")."""
    frac = human_time.partition(".")[2]
    return int(seconds) * 10**9 + int(frac or 0)


def parse_line(line: bytes, started: int) -> Listed:
    try:
        _, name, fields, quoted = line.decode("utf-8", "surrogateescape").split(_SEP, 3)
        f = fields.split(" ")
        ino, nlink, rawmode, uid, gid, size, mtime = (
            int(f[0]),
            int(f[1]),
            int(f[2], 16),
            *map(int, f[3:7]),
        )
        mtime_ns, ctime_ns, ctime = _ns(f[6], f[8]), _ns(f[10], f[12]), int(f[10])
    except (ValueError, IndexError):
        raise Unlisted(f"unparsable listing line {line[:200]!r}") from None
    kind = _KINDS.get(rawmode & _S_IFMT)
    if kind is None:
        raise Unlisted(f"{name!r}: not a file, directory or symlink")
    target = ""
    if kind == "symlink":
        head = f"'{name}' -> '"
        if not (quoted.startswith(head) and quoted.endswith("'")):
            raise Unlisted(f"{name!r}: symlink target not parsable")
        target = quoted[len(head) : -1]
    return Listed(
        normalize(name),
        kind,
        rawmode & 0o7777,
        uid,
        gid,
        size,
        mtime,
        nlink,
        ino,
        (ino, size, mtime_ns, ctime_ns),
        max(ctime, mtime) >= started - RACY_S,
        target,
    )


@dataclass
class Listing:
    """The sorted listing, spooled to a local file so it can be read more than once."""

    path: Path
    started: int
    count: int
    parse: Callable[[bytes, int], Listed] = parse_line  # of one line of the spool

    def __iter__(self) -> Iterator[Listed]:
        last: tuple | None = None
        seen = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                item = self.parse(line.rstrip(b"\n"), self.started)
                key = walk_key(item.path)
                if last is not None and key <= last:
                    raise Unlisted(f"listing not in walk order at {item.path!r}")
                last, seen = key, seen + 1
                yield item
        if seen != self.count:  # a newline in a symlink target would add a line
            raise Unlisted(f"listing has {seen} entries, find counted {self.count}")


def fetch_listing(tar_chunks: Iterable[bytes], spool: Path) -> Listing:
    """Read the helper's listing directory (a tar from the engine) into `spool`."""
    raw = io.BufferedReader(ChunkStream(iter(tar_chunks)), CHUNK)
    values: dict[str, bytes] = {}
    with tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if not member.isreg():
                continue
            src = tar.extractfile(member)
            if base == "d_list":
                fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
            else:
                values[base] = src.read(1 << 16)
    if values.get("b_odd", b"").strip():
        raise Unlisted("names with a newline or control character")
    try:
        return Listing(spool, int(values["a_started"]), int(values["c_count"]))
    except (KeyError, ValueError):
        raise Unlisted("the helper's listing is incomplete") from None


# --------------------------------------------------------------------------- the index
# One JSON line per member, in archive order: [path, kind, key, frame, sha256, xattrs]
# key: [inode, size, mtime_ns, ctime_ns] or null when not trusted (racy, or not listed);
# frame: [part, offset, length, own(, prefix)] of the data frame, for files with data; own:
# the part holds this file's data and, before it, headers only, whose sha256 is prefix.


class IndexSpool:
    """Index lines compressed into a temporary file, appended to the artifact at the end."""

    def __init__(self, directory: Path, started: int | None) -> None:
        self._fh = tempfile.TemporaryFile(dir=directory)  # 0600, gone when closed or on a crash
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
        self._z = cctx.stream_writer(self._fh, closefd=False)
        self.add({"format": FORMAT, "listed_at": started})

    def add(self, record: list | dict) -> None:
        self._z.write(jsonlines.dumps(record) + b"\n")

    def frames(self, offset: int) -> Iterator[bytes]:
        """The index as a skippable frame starting at `offset`, then the trailer frame."""
        self._z.close()
        length = self._fh.tell()
        self._fh.seek(0)
        yield struct.pack("<II", INDEX_MAGIC, length)
        while chunk := self._fh.read(CHUNK):
            yield chunk
        self._fh.close()
        yield _TRAILER.pack(TRAILER_MAGIC, _TRAILER.size - 8, _TAG, offset, length + 8)


def pread_chunks(fd: int, offset: int, length: int) -> Iterator[bytes]:
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            raise CorruptArtifact("the previous artifact is shorter than its index says")
        offset += len(chunk)
        yield chunk


def read_index(fd: int) -> Iterator[list]:
    """The index records of a framed artifact (open file descriptor); Stale if it has none."""
    size = os.fstat(fd).st_size
    if size < _TRAILER.size:
        raise Stale("too short to hold an index")
    magic, _, tag, offset, length = _TRAILER.unpack(
        os.pread(fd, _TRAILER.size, size - _TRAILER.size)
    )
    if magic != TRAILER_MAGIC or tag != _TAG or offset + length > size - _TRAILER.size:
        raise Stale("no index (an artifact written before incremental backups)")
    head = os.pread(fd, 8, offset)
    if struct.unpack("<II", head) != (INDEX_MAGIC, length - 8):
        raise Stale("the index frame is damaged")
    dobj, buf, first = zstandard.ZstdDecompressor().decompressobj(), b"", True
    try:
        for chunk in pread_chunks(fd, offset + 8, length - 8):
            buf += dobj.decompress(chunk)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                record = jsonlines.loads(line)
                if first and record.get("format") != FORMAT:
                    raise Stale(f"index format {record.get('format')} is not {FORMAT}")
                if not first:
                    yield record
                first = False
    except (zstandard.ZstdError, ValueError, CorruptArtifact) as exc:
        raise Stale(f"the index is damaged: {exc}") from None
    if not dobj.eof or buf:
        raise Stale("the index is cut short")


# --------------------------------------------------------------------------- the plan


@dataclass(slots=True)
class Step:
    item: Listed
    kind: str  # dir | file | symlink | hardlink
    linkname: str  # a hard link's first path, or a symlink's target
    reuse: list | None  # the previous index record whose data frame is copied
    fetch: str | None  # the path read through the engine for this member (None: not read)
    xattrs: dict | None


class Cursor:
    """Merge-join: finds walk-ordered items (index records, listed entries) by path, in order."""

    def __init__(self, items: Iterable, path_of: Callable[[Any], str]) -> None:
        self._it, self._path_of, self._head = iter(items), path_of, None
        self._advance()

    def _advance(self) -> None:
        self._head = next(self._it, None)
        self._key = walk_key(self._path_of(self._head)) if self._head is not None else None

    def find(self, path: str):
        key = walk_key(path)
        while self._head is not None and self._key < key:
            self._advance()
        return self._head if self._head is not None and self._key == key else None


def _under(path: str, root: str) -> bool:
    return path.startswith(root + "/")


def plan(listing: Iterable[Listed], previous: Iterable[list]) -> Iterator[Step]:
    """What to do with each listed entry: reuse its data frame, read it, or neither.

    A directory the previous index does not know is read whole (one engine call), as is a
    file whose listed key changed; hard links follow the engine's rule (the first path of
    an inode in walk order carries the data, later ones link to it).
    """
    cursor, first_path, new_dir = Cursor(previous, lambda r: r[0]), {}, None
    for item in listing:
        old = cursor.find(item.path)
        same = old is not None and old[2] is not None and tuple(old[2]) == item.key
        if new_dir and not _under(item.path, new_dir):
            new_dir = None
        kind, link = item.kind, item.target
        if kind != "dir" and item.nlink > 1:
            first = first_path.setdefault(item.ino, item.path)
            if first != item.path:
                kind, link = "hardlink", first
        fetch, reuse = new_dir, None
        if fetch is None and kind == "dir" and old is None and item.path != ROOT:
            new_dir = fetch = item.path
        if fetch is None and kind == "file" and item.size:
            if same and old[1] == "file" and old[3]:
                reuse = old
            else:
                fetch = item.path
        yield Step(item, kind, link, reuse, fetch, old[5] if same else None)
