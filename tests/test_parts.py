"""PARTS: every part's plaintext is checked against its listed digest whenever it is read,
whichever kind of digest listed it (XXH3-128 now, a bare SHA-256 in parts written before)."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from workers.store import parts
from workers.store.codec import Codec, CorruptArtifact, zstd_chunks
from workers.store.parts import LIST_NAME, Part, PartedWriter

_RNG = random.Random(7)
STREAMED = _RNG.randbytes(300_000) + bytes(200_000)
OWN = _RNG.randbytes(150_000) + b"\x11" * 150_001  # not a multiple of 512: padded


def _artifact(directory: Path) -> Path:
    """A parted artifact of two parts: one streamed, one of its own (a tar header first)."""
    with PartedWriter(directory / "uploads.tar", Codec("zstd")) as writer:
        writer.write(STREAMED)
        writer.own_part(b"H" * 512, io.BytesIO(OWN), len(OWN)).result()
        return directory / writer.commit()["file"]


def _plaintext(path: Path, part: Part) -> bytes:
    with open(path / part.name, "rb") as fh:
        return b"".join(zstd_chunks(fh))  # every frame of the part


def _relist(path: Path, digest: Callable[[bytes], str]) -> None:
    """Rewrite PARTS with digest(plaintext) as every part's plaintext digest."""
    header = (path / LIST_NAME).read_text().splitlines(keepends=True)[0]
    lines = [
        p._replace(plain_digest=digest(_plaintext(path, p))).line() for p in parts.read_list(path)
    ]
    (path / LIST_NAME).write_text(header + "".join(lines))


def _xxh3(data: bytes) -> str:
    return "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_each_part_lists_the_xxh3_of_its_plaintext(tmp_path):
    path = _artifact(tmp_path)
    listed = parts.read_list(path)
    assert len(listed) == 2
    for part in listed:
        assert part.plain_digest == _xxh3(_plaintext(path, part))
    own_plain = b"H" * 512 + OWN + bytes(-len(OWN) % 512)
    assert b"".join(parts.read_plain(path)) == STREAMED + own_plain


@pytest.mark.parametrize("digest", [_xxh3, _sha256], ids=["xxh3_128", "bare sha256"])
def test_a_part_that_decodes_to_other_bytes_than_listed_is_refused(tmp_path, digest):
    path = _artifact(tmp_path)
    whole = b"".join(parts.read_plain(path))
    _relist(path, digest)
    assert b"".join(parts.read_plain(path)) == whole, "the listing as rewritten is right"

    _relist(path, lambda plain: digest(plain[:-1] + bytes([plain[-1] ^ 1])))
    with pytest.raises(CorruptArtifact, match="00000000.zst: decompressed content does not"):
        b"".join(parts.read_plain(path))


def test_a_part_listed_with_a_bare_sha256_is_linked_into_a_new_backup_as_listed(tmp_path):
    """An unchanged file of a backup made before XXH3 keeps its part and its digest."""
    old = _artifact(tmp_path / "old")
    _relist(old, _sha256)
    shared = parts.read_list(old)[1]
    with PartedWriter(tmp_path / "new" / "uploads.tar", Codec("zstd")) as writer:
        writer.write(b"a new file")
        writer.link_part(old, shared)
        new = tmp_path / "new" / writer.commit()["file"]
    linked = parts.read_list(new)[1]
    assert linked.plain_digest == shared.plain_digest == _sha256(_plaintext(old, shared))
    assert b"".join(parts.read_plain(new)).endswith(_plaintext(old, shared))


def test_a_digest_of_a_kind_unknown_here_is_a_damaged_list(tmp_path):
    path = _artifact(tmp_path)
    _relist(path, lambda plain: "md5:" + hashlib.md5(plain).hexdigest())
    with pytest.raises(CorruptArtifact, match=f"{LIST_NAME} line 2 is damaged"):
        parts.read_list(path)
