"""Artifact streams: compression (zstd, gzip, none) and optional age encryption.

Writers hash both the plaintext and the stored bytes as they stream, so an artifact is
never re-read to be checksummed, and write to `<name>.partial` until `commit()`, so a
crash never leaves a file that looks finished.  Readers give back plaintext.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyrage
import xxhash
import zstandard

from workers.config import DEFAULT_ZSTD_LEVEL
from workers.store.atomic import start_writeback
from workers.store.readahead import read_ahead

SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}
AGE_SUFFIX = ".age"
PARTIAL = ".partial"
PARTS_SUFFIX = ".parts"  # a directory of part files (see parts)
CHUNK = 1 << 20


class CorruptArtifact(Exception):
    """An artifact does not decompress or decrypt to the end."""


@dataclass(frozen=True)
class Codec:
    compression: str = "zstd"
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    recipients: tuple[str, ...] = ()
    # -1: a compressing thread per core; 0: in the writer's thread, for a stream that
    # arrives slower than one core compresses it (the other cores stay with its source).
    zstd_threads: int = -1

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    def suffix(self) -> str:
        return SUFFIX[self.compression] + (AGE_SUFFIX if self.encrypted else "")


def codec_of(path: str | Path) -> tuple[str, bool]:
    """(compression, encrypted) as told by an artifact's file name."""
    name = str(path).removesuffix(PARTS_SUFFIX)
    encrypted = name.endswith(AGE_SUFFIX)
    if encrypted:
        name = name[: -len(AGE_SUFFIX)]
    for compression, suffix in SUFFIX.items():
        if suffix and name.endswith(suffix):
            return compression, encrypted
    return "none", encrypted


class HashingFile:
    """The bottom of the stack: the file on disk, hashed as written.  Every WRITEBACK bytes
    the kernel is told to start writing what has reached it (all but the buffer's worth)."""

    WRITEBACK = 8 << 20

    def __init__(self, fh: BinaryIO, tap: Callable[[bytes], None] | None = None) -> None:
        self.fh = fh
        self.tap = tap  # also given every byte written
        self.sha = hashlib.sha256()
        self.size = 0
        self._kicked = 0

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        if self.tap:
            self.tap(data if isinstance(data, bytes) else bytes(data))
        flushed = self.size - CHUNK  # the buffered writer holds at most CHUNK bytes
        if flushed - self._kicked >= self.WRITEBACK:
            start_writeback(self.fh.fileno(), self._kicked, flushed - self._kicked)
            self._kicked = flushed
        return len(data)

    def flush(self) -> None:
        self.fh.flush()


class _PipeEncryptor:
    """Push-style age encryption: pyrage pulls from a pipe that we write into."""

    def __init__(self, sink: HashingFile, recipients: Sequence[str]) -> None:
        keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
        rfd, wfd = os.pipe()
        self._reader = os.fdopen(rfd, "rb", buffering=CHUNK)
        self._writer = os.fdopen(wfd, "wb", buffering=CHUNK)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sink, keys), daemon=True)
        self._thread.start()

    def _run(self, sink: HashingFile, keys: list) -> None:
        try:
            pyrage.encrypt_io(self._reader, sink, keys)
        except BaseException as exc:  # reported to the writer thread in close()
            self._error = exc
        finally:
            self._reader.close()

    def write(self, data: bytes) -> int:
        return self._writer.write(data)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._thread.join()
        if self._error:
            raise self._error


# What a plaintext is hashed with: SHA-256 is what manifests record; XXH3-128 (6-8
# times faster here) compares a stream decoded as written with its input, and checks a
# part's plaintext (parts.py), where only a fault, not an adversary, could make them differ.
HASHES: dict[str, Callable] = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128}
COMPARED = "xxh3_128"  # the digest a stream and its decoding are compared by


class FrameDecoder:
    """Concatenated zstd frames decoded as their bytes come, in pieces of any size."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self.pending = False  # a frame is begun and not ended

    def feed(self, data: bytes) -> list[bytes]:
        """The plaintext these bytes complete; raises zstandard.ZstdError on a bad frame."""
        out = []
        while data:
            plain, self.pending = self._obj.decompress(data), True
            if plain:
                out.append(plain)
            if self._obj.eof:
                data, self.pending = self._obj.unused_data, False
                self._obj = self._dctx.decompressobj()
            else:
                data = b""
        return out


class EchoCheck:
    """One stream's plaintext as written and its compressed bytes decoded as they reach
    the disk (`tap`, for a HashingFile), both in the writer's own thread, digested to be
    compared.  Inactive, it checks nothing."""

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self._decoder = FrameDecoder()
        self._written, self._decoded = HASHES[COMPARED](), HASHES[COMPARED]()
        self._sizes = [0, 0]  # written, decoded

    @property
    def tap(self) -> Callable[[bytes], None] | None:
        return self._decode if self.active else None

    def written(self, plain: bytes) -> None:
        if self.active:
            self._written.update(plain)
            self._sizes[0] += len(plain)

    def _decode(self, data: bytes) -> None:
        try:
            for plain in self._decoder.feed(data):
                self._decoded.update(plain)
                self._sizes[1] += len(plain)
        except zstandard.ZstdError as exc:
            message = f"the compressed stream is wrong: a frame is damaged: {exc}"
            raise CorruptArtifact(message) from None

    def check(self) -> None:
        """Raise CorruptArtifact unless the stream decoded, whole, to what was written."""
        written, decoded = self._sizes
        if self.active and (
            self._decoder.pending
            or written != decoded
            or self._written.digest() != self._decoded.digest()
        ):
            raise CorruptArtifact(
                "the compressed stream is wrong: it decodes to other bytes than were written"
            )


class PlainHasher:
    """The plaintext's size and digests (sha256 unless told), in a thread of its own and in
    write order: it overlaps the compression, and for zstd frames (copied from another
    artifact, or an artifact's own stream as it is written) it does their decompression,
    which checks them.  Small writes of one kind are batched into one hand-off; at most
    DEPTH hand-offs wait, so memory stays flat."""

    DEPTH = 8
    BATCH = 256 << 10

    def __init__(self, digests: tuple[str, ...] = ("sha256",)) -> None:
        self._kinds = digests
        self.hashes = self._fresh()
        self.size = 0
        self.cuts: list[tuple[int, dict]] = []  # (size, {digest kind: hex}) of each section
        self._batch, self._batch_kind = bytearray(), "plain"  # pieces of one kind, in order
        self._jobs: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="plain-hash", daemon=True)
        self._thread.start()

    def _fresh(self) -> dict:
        return {kind: HASHES[kind]() for kind in self._kinds}

    @property
    def sha(self):
        return self.hashes["sha256"]

    def _update(self, data: bytes) -> None:
        for digest in self.hashes.values():
            digest.update(data)

    def plain(self, data: bytes) -> None:
        self._add("plain", data)

    def frames(self, data: bytes) -> None:
        """A piece of complete zstd frames (a frame may span pieces)."""
        self._add("frames", data)

    def end_frames(self, expect: int | None) -> None:
        """The frames given since the last end are whole, and hold `expect` bytes if given."""
        self._flush()
        self._jobs.put(("end", expect))

    def cut(self) -> None:
        """Close a section (a part file): its size and digests go to `cuts`, and the next
        section is hashed from scratch."""
        self._flush()
        self._jobs.put(("cut", None))

    def finish(self) -> Exception | None:
        """Wait for the thread; the defect it found (a damaged frame), if any."""
        self._flush()
        self._jobs.put(None)
        self._thread.join()
        return self._error

    def _add(self, kind: str, data: bytes) -> None:
        if self._batch and kind != self._batch_kind:
            self._flush()  # in write order
        if len(data) >= self.BATCH:
            self._flush()
            # hashed later: a caller's reusable buffer must not change under the thread
            self._jobs.put((kind, data if isinstance(data, bytes) else bytes(data)))
            return
        self._batch_kind = kind
        self._batch += data
        if len(self._batch) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._jobs.put((self._batch_kind, bytes(self._batch)))
            self._batch.clear()

    def _run(self) -> None:
        decoder, copied = FrameDecoder(), 0
        while (job := self._jobs.get()) is not None:
            if self._error:
                continue  # keep draining: the writer learns of it in finish()
            kind, data = job
            try:
                if kind == "plain":
                    self._update(data)
                    self.size += len(data)
                elif kind == "frames":
                    for out in decoder.feed(data):
                        self._update(out)
                        copied += len(out)
                elif kind == "cut":
                    digests = {name: h.hexdigest() for name, h in self.hashes.items()}
                    self.cuts.append((self.size, digests))
                    self.hashes, self.size = self._fresh(), 0
                else:
                    if decoder.pending:
                        raise CorruptArtifact("a frame is cut short")
                    if data is not None and copied != data:
                        raise CorruptArtifact(f"the frames hold {copied} bytes, not {data}")
                    self.size, copied = self.size + copied, 0
            except zstandard.ZstdError as exc:
                self._error = CorruptArtifact(f"a frame is damaged: {exc}")
            except Exception as exc:  # noqa: BLE001 - handed to the writer's thread
                self._error = exc


class ArtifactWriter:
    """Write one artifact: plaintext in, compressed (and encrypted) bytes on disk."""

    def __init__(self, path: Path, codec: Codec) -> None:
        self.path = Path(str(path) + codec.suffix())  # callers pass the name without suffix
        self.codec = codec
        self.partial = Path(str(self.path) + PARTIAL)
        self.partial.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fh = os.fdopen(fd, "wb", buffering=CHUNK)
        # An unencrypted zstd stream is decoded as it is written (frame checksums checked,
        # the plaintext hashed), so the backup's verify need not decompress it again: a
        # thread of its own, which overlaps the capture instead of following it.
        echoed = codec.compression == "zstd" and not codec.encrypted
        self._echo = PlainHasher((COMPARED,)) if echoed else None
        self._disk = HashingFile(self._fh, self._echo.frames if self._echo else None)
        self._encryptor = _PipeEncryptor(self._disk, codec.recipients) if codec.encrypted else None
        below = self._encryptor or self._disk
        if codec.compression == "zstd":
            # A checksum per frame lets a frame copied into a later artifact prove itself.
            cctx = zstandard.ZstdCompressor(
                level=codec.zstd_level, threads=codec.zstd_threads, write_checksum=True
            )
            self._top = cctx.stream_writer(below, closefd=False)
        elif codec.compression == "gzip":
            self._top = gzip.GzipFile(fileobj=below, mode="wb", compresslevel=6, mtime=0)
        else:
            self._top = below
        self._plain = PlainHasher(("sha256", COMPARED) if echoed else ("sha256",))
        self._closed = False
        self._frame_open = self._framed = False

    def write(self, data: bytes) -> int:
        self._plain.plain(data)
        self._top.write(data)
        self._frame_open = True
        return len(data)

    def _check_framed(self) -> None:
        if self.codec.compression != "zstd" or self.codec.encrypted:
            raise ValueError("frames are addressable only in unencrypted zstd artifacts")

    def end_frame(self) -> int:
        """End the zstd frame in progress (if any); the stored offset where the next begins."""
        self._check_framed()
        self._framed = True
        if self._frame_open:
            self._top.flush(zstandard.FLUSH_FRAME)
            self._frame_open = False
        return self._disk.size

    def append_frames(self, chunks: Iterable[bytes], plain_bytes: int | None = None) -> None:
        """Append complete zstd (or skippable) frames verbatim at a frame boundary.

        They are decompressed (in the hashing thread) only to hash their plaintext into the
        artifact's, which also checks them: a damaged or cut frame, or one not holding
        `plain_bytes` when given, makes close() raise CorruptArtifact (the caller aborts).
        """
        self.end_frame()
        for chunk in chunks:
            self._disk.write(chunk)
            self._plain.frames(chunk)
        self._plain.end_frames(plain_bytes)

    def close(self) -> dict:
        """Finish the streams and fsync; the artifact stays `.partial` until commit()."""
        if not self._closed:
            self._closed = True
            try:
                ends_frame = self._frame_open or not self._framed  # no empty frame after last
                if self._top not in (self._encryptor, self._disk) and ends_frame:
                    self._top.close()
                if self._encryptor:
                    self._encryptor.close()
                self._fh.flush()
                os.fsync(self._fh.fileno())
            finally:  # also on ENOSPC: an fd left open keeps a deleted .partial's space taken
                self._fh.close()
                defect = self._plain.finish()
                undecoded = self._finish_echo()
            if defect:
                raise defect
            if undecoded:
                raise undecoded
        return self.record()

    def _finish_echo(self) -> CorruptArtifact | None:
        """Why the stream written does not decode to the plaintext written, if it does not."""
        if not self._echo:
            return None
        self._echo.end_frames(None)
        defect = self._echo.finish()
        echoed = (self._echo.size, self._echo.hashes[COMPARED].digest())
        if not defect and echoed != (self._plain.size, self._plain.hashes[COMPARED].digest()):
            defect = CorruptArtifact("it decodes to other bytes than were written")
        if defect:
            return CorruptArtifact(f"{self.path.name}: the compressed stream is wrong: {defect}")
        return None

    def record(self) -> dict:
        return {
            "file": self.path.name,
            "compression": self.codec.compression,
            "encrypted": self.codec.encrypted,
            "size_bytes": self._disk.size,
            "sha256": self._disk.sha.hexdigest(),
            "plain_bytes": self._plain.size,
            "plain_sha256": self._plain.sha.hexdigest(),
            **({"decoded_when_written": True} if self._echo else {}),
        }

    def commit(self) -> dict:
        record = self.close()
        os.replace(self.partial, self.path)
        return record

    def abort(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the artifact is being thrown away anyway
            pass
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _load_identities(identity_file: Path | None) -> list:
    if identity_file is None:
        raise CorruptArtifact("the artifact is encrypted and XIEHE_AGE_IDENTITY_FILE is not set")
    keys = [
        line.strip()
        for line in Path(identity_file).read_text().splitlines()
        if line.strip().startswith("AGE-SECRET-KEY-")
    ]
    if not keys:
        raise CorruptArtifact(f"no AGE-SECRET-KEY in {identity_file}")
    return [pyrage.x25519.Identity.from_str(k) for k in keys]


class _PipeDecryptor:
    """Pull-style reader of an age file: pyrage pushes plaintext into a pipe we read."""

    def __init__(self, path: Path, identities: list) -> None:
        rfd, wfd = os.pipe()
        self.reader = os.fdopen(rfd, "rb", buffering=CHUNK)
        self._writer = os.fdopen(wfd, "wb", buffering=CHUNK)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path, identities), daemon=True)
        self._thread.start()

    def _run(self, path: Path, identities: list) -> None:
        try:
            with open(path, "rb") as src:
                pyrage.decrypt_io(src, self._writer, identities)
        except BaseException as exc:  # surfaced by read() at EOF
            self.error = exc
        finally:
            try:
                self._writer.close()
            except OSError:
                pass

    def read(self, n: int = -1) -> bytes:
        data = self.reader.read(n)
        if not data:
            self._thread.join()
            if self.error:
                raise CorruptArtifact(f"cannot decrypt: {self.error}")
        return data

    def close(self) -> None:
        self.reader.close()
        self._thread.join(timeout=5)


def zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompress every concatenated frame; a frame cut short is an error, not EOF."""
    decoder = FrameDecoder()
    while data := raw.read(CHUNK):
        yield from decoder.feed(data)
    if decoder.pending:
        raise CorruptArtifact("the zstd stream is truncated")


def _gzip_chunks(raw: BinaryIO) -> Iterator[bytes]:
    with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        while chunk := gz.read(CHUNK):
            yield chunk


def _raw_chunks(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(CHUNK):
        yield chunk


_DECOMPRESSORS = {"zstd": zstd_chunks, "gzip": _gzip_chunks, "none": _raw_chunks}


def read_plain(path: Path, identity_file: Path | None = None) -> Iterator[bytes]:
    """Plaintext chunks of an artifact; raises CorruptArtifact on a damaged stream."""
    from workers.store import parts  # it builds on this module

    if parts.is_parted(path):
        try:
            yield from parts.read_plain(path)
        except CorruptArtifact as exc:
            raise CorruptArtifact(f"{path.name}: {exc}") from None
        return
    compression, encrypted = codec_of(path)
    decryptor = _PipeDecryptor(path, _load_identities(identity_file)) if encrypted else None
    raw: BinaryIO = decryptor if decryptor else open(path, "rb")  # type: ignore[assignment]
    try:
        yield from _DECOMPRESSORS[compression](raw)
    except (zstandard.ZstdError, EOFError, gzip.BadGzipFile) as exc:
        raise CorruptArtifact(f"{path.name}: {exc}") from None
    except CorruptArtifact as exc:
        raise CorruptArtifact(f"{path.name}: {exc}") from None
    finally:
        raw.close()


class ChunkStream(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (for tarfile, loaders)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Closes the iterator too: a reader that stops early stops what makes the chunks
        (a read-ahead thread, a decryptor) now, not when the iterator is collected."""
        if not self.closed:
            close = getattr(self._chunks, "close", None)
            if close:
                close()
        super().close()

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def open_plain(path: Path, identity_file: Path | None = None, ahead: bool = False) -> BinaryIO:
    """A buffered file object of an artifact's plaintext; `ahead`: decoded by a thread of
    its own, a few chunks ahead of the reader (readahead)."""
    chunks = read_plain(path, identity_file)
    return io.BufferedReader(ChunkStream(read_ahead(chunks) if ahead else chunks), CHUNK)
