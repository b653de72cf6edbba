"""Members appended one by one to a parted artifact, its index and manifest digest."""

from __future__ import annotations

import hashlib
import tarfile
from collections import deque
from concurrent.futures import Future
from typing import BinaryIO

from workers.store import parts
from workers.store.codec import CHUNK
from workers.targets.tar_safety import SafetyFilter
from workers.targets.volumes import index as vi
from workers.targets.volumes import tar_header
from workers.targets.volumes.inventory import EMPTY_SHA256, inventory_entry, manifest_line
from workers.targets.volumes.members import padded
from workers.targets.volumes.meter import Meter, Progress
from workers.targets.volumes.previous import Previous

OWN_PART = 64 << 10  # a file this big gets a part file of its own, linked while unchanged
HELD_HEADERS = 1 << 20  # headers held for the next part at most, then written to a shared one


class Composer:
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
        self.writer, self.guard, self.meter = writer, SafetyFilter(), Meter(progress)
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
        previous: Previous | None = None,
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
            entry = inventory_entry(info, path, sha)
            self.manifest.update(manifest_line(path, entry))
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
        previous: Previous | None,
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
        previous: Previous | None,
    ) -> list | None:
        """The previous backup's own part of this file, linked if it holds these very headers
        (its own, and those of the entries held before it) and data."""
        if not reuse or not reuse[3][3] or reuse[3][4] != prefix_sha:
            return None  # a header changed (a directory's mtime, say): copy the data frame
        part = previous.parts.get(reuse[3][0])
        if part is None or part.plain_bytes != len(prefix) + padded(size):
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

    def _copy(self, previous: Previous, old: list, size: int) -> list:
        start = self.writer.end_frame()
        plain = padded(size)  # checked when the artifact is committed
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
