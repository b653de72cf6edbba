"""The previous backup's parted artifact, whose unchanged parts and frames are reused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from workers.store import parts
from workers.targets.volumes import index as vi


class Previous:
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
