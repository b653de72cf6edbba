"""Parted artifacts: one zstd stream kept as numbered part files in a directory.

    volumes/uploads_ID.tar.zst.parts/
      00000000.zst 00000001.zst ...   complete zstd frames each; in name order they are
                                      the artifact (`cat *.zst | zstd -dc | tar x`)
      PARTS                           one line per part: name, stored size and sha256,
                                      plaintext size and digest, mtime when written

A part that holds exactly what a part of an earlier backup holds is a hard link to it:
unchanged files cost a directory entry, not a copy, and each backup still restores alone
(a file's data stays on disk while any backup links it).  The artifact's sha256 in the
manifest is that of PARTS, which pins every part; readers check each part against it.
A part is linked only while its size and mtime are still those it was written with: one
written to since (damaged in place) is not carried into a new backup.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, NamedTuple

import zstandard

from workers.store.atomic import start_writeback, sync_filesystem
from workers.store.codec import (
    CHUNK,
    COMPARED,
    HASHES,
    PARTIAL,
    PARTS_SUFFIX,
    Codec,
    CorruptArtifact,
    EchoCheck,
    HashingFile,
    PlainHasher,
    sha256_file,
    zstd_chunks,
)

LIST_NAME = "PARTS"
_HEADER = "# name\tsize\tsha256\tplain_bytes\tplain_digest\tmtime_ns\n"
# A part's plaintext is checked by its XXH3-128, listed as "xxh3_128:<hex>": the stored
# bytes are pinned by their sha256 (and PARTS by the manifest's), so only a fault, not an
# adversary, could make their decoding differ.  A SHA-256 of it took a sixth of a first
# volume backup's CPU and half of reading the artifact back (210 MB of DICOM-like files:
# 0.73 -> 0.61 s and 0.26 -> 0.13 s).  Parts listed before (and linked into later
# backups) carry a bare sha256 hex, which is still read.
PLAIN_DIGEST = COMPARED


class Part(NamedTuple):  # a tuple: made and copied once per file of a volume, cheaply
    name: str
    size: int
    sha256: str
    plain_bytes: int
    plain_digest: str  # "<kind>:<hex>", or a bare sha256 hex
    mtime_ns: int

    def line(self) -> str:
        fields = (self.name, self.size, self.sha256, self.plain_bytes, self.plain_digest)
        return "\t".join(map(str, (*fields, self.mtime_ns))) + "\n"

    def untouched(self, path: str | Path) -> bool:
        """Whether the file still has the size and mtime this part was written with."""
        try:
            info = os.stat(path)
        except OSError:
            return False
        return info.st_size == self.size and info.st_mtime_ns == self.mtime_ns


def is_parted(path: str | Path) -> bool:
    return str(path).endswith(PARTS_SUFFIX)


def part_name(number: int) -> str:
    return f"{number:08d}.zst"


def read_list(directory: Path) -> list[Part]:
    """The parts, in order; CorruptArtifact if the list is missing or malformed."""
    try:
        text = (directory / LIST_NAME).read_text(encoding="utf-8")
    except OSError as exc:
        raise CorruptArtifact(f"{directory.name}: no readable {LIST_NAME} ({exc})") from None
    parts = []
    for number, line in enumerate(text.splitlines()[1:]):
        fields = line.split("\t")
        try:
            name, size, sha, plain_bytes, plain_digest, mtime_ns = fields
            part = Part(name, int(size), sha, int(plain_bytes), plain_digest, int(mtime_ns))
            _plain_hash(part)  # a digest of a kind unknown here: KeyError
        except (ValueError, KeyError):
            damaged = f"{directory.name}: {LIST_NAME} line {number + 2} is damaged"
            raise CorruptArtifact(damaged) from None
        if name != part_name(number):
            raise CorruptArtifact(f"{directory.name}: {LIST_NAME} names {name!r} out of order")
        parts.append(part)
    return parts


def stored_sha256(path: Path) -> str:
    """The sha256 a manifest records of an artifact: of the file, or of a parted one's list
    (each part is checked against the list when it is read)."""
    if not is_parted(path):
        return sha256_file(path)
    try:
        return hashlib.sha256((path / LIST_NAME).read_bytes()).hexdigest()
    except OSError as exc:
        raise CorruptArtifact(f"{path.name}: no readable {LIST_NAME} ({exc})") from None


def stored_size(path: Path) -> int:
    """Bytes on disk of an artifact (a file, or a parted directory as listed)."""
    if not is_parted(path):
        return path.stat().st_size
    return sum(p.size for p in read_list(path)) + (path / LIST_NAME).stat().st_size


class _HashingReader:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        return data


def _listed(hexdigest: str) -> str:
    """A plaintext digest as PARTS lists it."""
    return f"{PLAIN_DIGEST}:{hexdigest}"


def _plain_hash(part: Part):
    """A fresh hash of the kind the part's plaintext digest was made with (KeyError for
    a kind unknown here)."""
    kind, sep, _ = part.plain_digest.rpartition(":")
    return HASHES[kind if sep else "sha256"]()


def _part_chunks(path: Path, part: Part) -> Iterator[bytes]:
    """A part's plaintext, its stored sha256 and plaintext digest checked when it ends."""
    plain, plain_size = _plain_hash(part), 0
    try:
        with open(path / part.name, "rb") as fh:
            stored = _HashingReader(fh)
            for chunk in zstd_chunks(stored):
                plain.update(chunk)
                plain_size += len(chunk)
                yield chunk
    except (OSError, zstandard.ZstdError, CorruptArtifact) as exc:
        raise CorruptArtifact(f"part {part.name}: {exc}") from None
    if stored.sha.hexdigest() != part.sha256:
        raise CorruptArtifact(f"part {part.name}: sha256 does not match {LIST_NAME}")
    expected = part.plain_digest.rpartition(":")[2]
    if plain_size != part.plain_bytes or plain.hexdigest() != expected:
        raise CorruptArtifact(f"part {part.name}: decompressed content does not match")


def read_plain(path: Path) -> Iterator[bytes]:
    """The artifact's plaintext, part after part, each checked against the list."""
    for part in read_list(path):
        yield from _part_chunks(path, part)


def check(path: Path, trust_linked: bool, decoded: bool = False) -> dict:
    """Read every part back (or, trusting links, only those no earlier backup shares: a
    linked part was checked by the backup that wrote it, and is unchanged since).  Parts
    are read side by side: decompressing and hashing release the GIL.  `decoded`: the
    writer decoded every part it wrote as it wrote it, so only their stored sha256 is
    read back."""
    listed = read_list(path)

    def shared(part: Part) -> bool:
        file = path / part.name
        return trust_linked and part.untouched(file) and os.stat(file).st_nlink > 1

    def read_back(part: Part) -> None:
        if not decoded:
            for _ in _part_chunks(path, part):
                pass
        elif sha256_file(path / part.name) != part.sha256:
            raise CorruptArtifact(f"part {part.name}: sha256 does not match {LIST_NAME}")

    unshared = [part for part in listed if not shared(part)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for _ in pool.map(read_back, unshared):  # the first defect in part order is raised
            pass
    return {"parts": len(listed), "parts_read": len(unshared)}


def remove(path: Path) -> int:
    """Delete an artifact (or a parted one's unfinished directory); the bytes this freed:
    a part that other backups link frees none."""
    if not path.is_dir():
        size = path.stat().st_size
        path.unlink()
        return size
    freed = 0
    for entry in os.scandir(path):
        info = entry.stat(follow_symlinks=False)
        freed += info.st_size if info.st_nlink == 1 else 0
        os.unlink(entry.path)
    path.rmdir()
    return freed


POOL = os.cpu_count() or 1  # threads writing parts of their own


class ShortRead(OSError):
    """A file gave fewer bytes than listed: it changed while being backed up."""


def _decoded(cut: tuple[int, dict]) -> tuple[int, str]:
    """(size, compared digest) of a section as the echo decoded it."""
    size, digests = cut
    return size, digests[COMPARED]


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class PartedWriter:
    """Write a parted zstd artifact: frames as ArtifactWriter writes them, a new part file
    whenever the caller ends one, and whole parts of an earlier artifact hard-linked in.

    Parts are written to `<path>.partial/` and made durable together at commit (one
    syncfs, not an fsync per part), then the directory is renamed."""

    def __init__(self, path: Path, codec: Codec, decode: bool = True) -> None:
        if codec.compression != "zstd" or codec.encrypted:
            raise ValueError("parted artifacts are unencrypted zstd")
        self.path = Path(str(path) + codec.suffix() + PARTS_SUFFIX)
        self.partial = Path(str(self.path) + PARTIAL)
        self.partial.mkdir(parents=True, mode=0o700)
        # One thread: a part's frames are small, and a multi-threaded frame end waits for
        # its workers (half a millisecond per frame here, for no gain in speed).
        self._level = codec.zstd_level
        self._cctx = self._compressor()
        # `decode`: every part is decoded as it is written and compared with its plaintext,
        # so the backup's verify only reads back its stored sha256 (see ArtifactWriter):
        # the parts written here by a thread beside this one, a part of its own in the
        # thread writing it (EchoCheck).  It costs CPU while the data is read, which the
        # caller may not want to spend then (services stopped meanwhile).
        self._decode = decode
        self._plain = PlainHasher((PLAIN_DIGEST,))  # COMPARED too, for the echo
        self._echo = PlainHasher((COMPARED,)) if decode else None
        # A Part, or a Future of one a pool thread writes; plain_bytes -1: written here and
        # hashed by the plain hasher (see commit)
        self._parts: list[Part | Future] = []
        self._open_part: tuple | None = None  # (file, hashing sink, compressor)
        self._frame_open = False
        self._pool = ThreadPoolExecutor(POOL, thread_name_prefix="part")
        # Jobs queued or running, each holding its source open: enough that the caller does
        # not wait on a few new files but links the unchanged parts meanwhile (+1% new
        # files: 9 ms of 60 waited with POOL * 2), and a bounded count of descriptors.
        self._slots = threading.BoundedSemaphore(POOL * 8)
        self._local = threading.local()
        self._linked = 0

    def _compressor(self) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(level=self._level, write_checksum=True)

    @property
    def current_part(self) -> str:
        """The name of the part being written (opened if there is none)."""
        self._ensure_part()
        return part_name(len(self._parts) - 1)

    def _ensure_part(self) -> tuple:
        if self._open_part is None:
            path = self.partial / part_name(len(self._parts))
            fh = open(path, "xb", buffering=CHUNK, opener=_private)
            disk = HashingFile(fh, self._echo.frames if self._echo else None)
            self._open_part = (fh, disk, self._cctx.stream_writer(disk, closefd=False))
            self._parts.append(None)
        return self._open_part

    def write(self, data: bytes) -> int:
        _, _, top = self._ensure_part()
        self._plain.plain(data)
        top.write(data)
        self._frame_open = True
        return len(data)

    def end_frame(self) -> int:
        """End the frame in progress; the offset in the current part where the next begins."""
        _, disk, top = self._ensure_part()
        if self._frame_open:
            top.flush(zstandard.FLUSH_FRAME)
            self._frame_open = False
        return disk.size

    def append_frames(self, chunks: Iterable[bytes], plain_bytes: int | None = None) -> None:
        """Complete frames copied verbatim into the current part (checked at commit)."""
        self.end_frame()
        _, disk, _ = self._open_part
        for chunk in chunks:
            disk.write(chunk)
            self._plain.frames(chunk)
        self._plain.end_frames(plain_bytes)

    def end_part(self) -> None:
        if self._open_part is None:
            return
        self.end_frame()
        fh, disk, _ = self._open_part
        fh.close()
        self._plain.cut()
        if self._echo:
            self._echo.end_frames(None)
            self._echo.cut()
        name = part_name(len(self._parts) - 1)
        mtime = os.stat(self.partial / name).st_mtime_ns
        self._parts[-1] = Part(name, disk.size, disk.sha.hexdigest(), -1, "", mtime)
        self._open_part = None

    def own_part(
        self, prefix: bytes, src: BinaryIO, size: int, wait: bool = False
    ) -> Future[tuple[Part, list, str]]:
        """A part of its own: `prefix` (headers) in one frame, then `size` bytes of `src`
        padded to tar's block in another; written by a pool thread (compression and hashing
        release the GIL, so parts are written side by side), or here if `wait` (a stream
        that must be read before the next entry).  It takes over `src` and closes it.
        The future gives (the Part, [name, data frame offset, length], the data's sha256)."""
        self.end_part()
        name = part_name(len(self._parts))
        if wait:
            future: Future = Future()
            try:
                future.set_result(self._write_own(name, prefix, src, size))
            except BaseException as exc:
                future.set_exception(exc)
        else:
            self._slots.acquire()
            future = self._pool.submit(self._write_own, name, prefix, src, size)
            future.add_done_callback(lambda _: self._slots.release())
        self._parts.append(future)
        return future

    def _write_own(
        self, name: str, prefix: bytes, src: BinaryIO, size: int
    ) -> tuple[Part, list, str]:
        cctx = getattr(self._local, "cctx", None) or self._compressor()
        self._local.cctx = cctx
        plain, content, done = HASHES[PLAIN_DIGEST](prefix), hashlib.sha256(), 0
        echo = EchoCheck(self._decode)
        echo.written(prefix)
        path = self.partial / name
        try:
            with open(path, "xb", buffering=CHUNK, opener=_private) as fh:
                disk = HashingFile(fh, echo.tap)
                disk.write(cctx.compress(prefix))
                offset = disk.size
                with cctx.stream_writer(disk, closefd=False) as top:
                    while done < size and (chunk := src.read(min(CHUNK, size - done))):
                        top.write(chunk)
                        plain.update(chunk)
                        content.update(chunk)
                        echo.written(chunk)
                        done += len(chunk)
                    if done != size:
                        raise ShortRead(f"part {name}: {done} of {size} bytes could be read")
                    pad = b"\0" * (-size % 512)
                    top.write(pad)
                    plain.update(pad)
                    echo.written(pad)
                fh.flush()
                # The disk starts on this part now: the fsync at commit then waits for
                # little (the +1% backup's new parts while its unchanged ones are linked).
                start_writeback(fh.fileno(), 0, 0)
            echo.check()
        except CorruptArtifact as exc:
            raise CorruptArtifact(f"part {name}: {exc}") from None
        finally:
            src.close()
        mtime = os.stat(path).st_mtime_ns
        total = len(prefix) + size + len(pad)
        part = Part(name, disk.size, disk.sha.hexdigest(), total, _listed(plain.hexdigest()), mtime)
        return part, [name, offset, disk.size - offset], content.hexdigest()

    def link_part(self, source: Path, part: Part) -> str:
        """Add an earlier artifact's part as a hard link; its name here."""
        self.end_part()
        linked = f"{source}/{part.name}"  # strings: Path joins cost more than the link here
        if not part.untouched(linked):
            raise CorruptArtifact(f"{source.name}/{part.name} was altered since it was written")
        name = part_name(len(self._parts))
        os.link(linked, f"{self.partial}/{name}")
        self._parts.append(part._replace(name=name))
        self._linked += 1
        return name

    def commit(self) -> dict:
        self.end_part()
        self._pool.shutdown()
        defect = self._plain.finish()
        undecoded = self._echo.finish() if self._echo else None
        if defect or undecoded:
            raise defect or CorruptArtifact(f"the compressed stream is wrong: {undecoded}")
        cuts, echoes = iter(self._plain.cuts), iter(self._echo.cuts if self._echo else ())
        parts, written = [], []
        for part in self._parts:
            if isinstance(part, Future):
                part = part.result()[0]
                written.append(self.partial / part.name)
            elif part.plain_bytes < 0:  # written here: its plaintext hash is the next cut
                size, digests = next(cuts)
                if self._echo and (size, digests[COMPARED]) != _decoded(next(echoes)):
                    raise CorruptArtifact(
                        f"part {part.name}: the compressed stream is wrong: it decodes to "
                        "other bytes than were written"
                    )
                part = part._replace(plain_bytes=size, plain_digest=_listed(digests[PLAIN_DIGEST]))
                written.append(self.partial / part.name)
            parts.append(part)
        listing = (_HEADER + "".join(p.line() for p in parts)).encode()
        with open(self.partial / LIST_NAME, "xb", opener=_private) as fh:
            fh.write(listing)
        sync_filesystem(self.partial, [*written, self.partial / LIST_NAME, self.partial])
        os.replace(self.partial, self.path)
        return {
            "file": self.path.name,
            "compression": "zstd",
            "encrypted": False,
            "size_bytes": sum(p.size for p in parts) + len(listing),
            "sha256": hashlib.sha256(listing).hexdigest(),
            "plain_bytes": sum(p.plain_bytes for p in parts),
            "parts": len(parts),
            "linked_parts": self._linked,
            **({"decoded_when_written": True} if self._decode else {}),
        }

    def abort(self) -> None:
        if self._open_part is not None:
            self._open_part[0].close()
            self._open_part = None
        self._pool.shutdown(cancel_futures=True)  # a running job finishes its part first
        self._plain.finish()
        if self._echo:
            self._echo.finish()
        if self.partial.exists():
            remove(self.partial)

    def __enter__(self) -> PartedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
