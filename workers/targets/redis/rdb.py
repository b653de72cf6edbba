"""RDB file checks done while the bytes stream past: magic, version, EOF opcode, CRC64.

Redis ends an RDB with the EOF opcode (0xFF) and the CRC64 (Jones polynomial, reflected,
little-endian) of every byte before the checksum; a checksum of 0 means the server had
`rdbchecksum no`.  The CRC runs in anycrc's C code (~5 GB/s here; crcmod's extension did
0.4 GB/s and needs a compiler at install): a Python byte loop would take minutes on a GB.
"""

from __future__ import annotations

from collections.abc import Iterable

import anycrc

from workers.store.codec import CorruptArtifact

MAGIC = b"REDIS"
HEADER = 9  # "REDIS" + 4 ASCII digits of the RDB version
EOF_OPCODE = 0xFF
TRAILER = 9  # EOF opcode + 8-byte checksum

_CRC64 = anycrc.CRC(width=64, poly=0xAD93D23594C935A9, init=0, refin=True, refout=True, xorout=0)


def _crc64(data: bytes | memoryview, crc: int) -> int:
    """Continue the running CRC `crc` over data."""
    return _CRC64.calc(data, crc)


class RdbCheck:
    """Feed the RDB in chunks with update(); finish() validates and summarises it."""

    def __init__(self) -> None:
        self.size = 0
        self._head = b""
        self._tail = b""  # the last TRAILER bytes seen, not yet in the CRC
        self._crc = 0

    def update(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if len(self._head) < HEADER:
            self._head += data[: HEADER - len(self._head)]
        if len(data) >= TRAILER:
            self._crc = _crc64(self._tail, self._crc)
            self._crc = _crc64(memoryview(data)[:-TRAILER], self._crc)
            self._tail = data[-TRAILER:]
        else:
            joined = self._tail + data
            self._crc = _crc64(joined[:-TRAILER], self._crc)
            self._tail = joined[-TRAILER:]

    def finish(self) -> dict:
        """{"rdb_version", "bytes", "checksum"}; raises CorruptArtifact when invalid."""
        version = self._version()
        if self.size < HEADER + TRAILER or self._tail[0] != EOF_OPCODE:
            raise CorruptArtifact("the RDB is truncated (no EOF opcode before the checksum)")
        stored = int.from_bytes(self._tail[1:], "little")
        if stored == 0:  # written with rdbchecksum no: nothing to compare
            return {"rdb_version": version, "bytes": self.size, "checksum": None}
        computed = _crc64(self._tail[:1], self._crc)
        if computed != stored:
            raise CorruptArtifact(
                f"RDB checksum mismatch: stored {stored:016x}, computed {computed:016x}"
            )
        return {"rdb_version": version, "bytes": self.size, "checksum": f"{stored:016x}"}

    def _version(self) -> int:
        if not self._head.startswith(MAGIC):
            raise CorruptArtifact("not an RDB file (no REDIS magic)")
        digits = self._head[len(MAGIC) : HEADER]
        if len(digits) != 4 or not digits.isdigit() or int(digits) < 1:
            raise CorruptArtifact(f"bad RDB version field {digits!r}")
        return int(digits)


def verify_rdb(chunks: Iterable[bytes]) -> dict:
    """Check a whole RDB given as plaintext chunks (e.g. codec.read_plain of an artifact)."""
    check = RdbCheck()
    for chunk in chunks:
        check.update(chunk)
    return check.finish()
