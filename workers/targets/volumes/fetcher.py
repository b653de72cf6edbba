"""Entries read through the engine as a plan asks: one call per new directory or
changed file, each checked to be what the listing said."""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO

from workers.store.codec import CHUNK, ChunkStream
from workers.targets.tar_safety import normalize
from workers.targets.volumes import index as vi
from workers.targets.volumes.engine import volume_tar
from workers.targets.volumes.members import xattrs_of


class EngineFetcher:
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
            chunks = volume_tar(self.helper, self.name, step.fetch)
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
        return xattrs_of(member.pax_headers), data

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
