"""The artifact writer commits a compressed stream only once it has decoded it to exactly
the bytes it was given; the backup's verify then reads it back for its sha256 alone."""

from __future__ import annotations

import io

import pytest
import zstandard

from tests.support.fake_backups import sql_dump
from workers.steps.verify_backup import verify_artifact
from workers.store import codec
from workers.store.codec import ArtifactWriter, Codec, CorruptArtifact
from workers.store.parts import PartedWriter

DUMP = sql_dump(200_000)  # 9.4 MB, 0.18 MB compressed: many blocks


class _Flipping:
    """Passes the compressor's output on with one byte changed, `at` bytes in."""

    def __init__(self, sink, at: int) -> None:
        self.sink, self.at, self.seen = sink, at, 0

    def write(self, data: bytes) -> int:
        if self.seen <= self.at < self.seen + len(data):
            changed = bytearray(data)
            changed[self.at - self.seen] ^= 0x40
            data = bytes(changed)
        self.seen += len(data)
        return self.sink.write(data)

    def flush(self, *mode) -> None:
        self.sink.flush(*mode)

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> _Flipping:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _faulty_compressor(monkeypatch, flips: str) -> None:
    """A compressor with one byte changed, 100 000 in, of its output (what a bug in it, or a
    bit flipped in memory, would do: nothing above the disk's own hash sees the change) or
    of its input (it then encodes other bytes, faithfully: every frame is sound and carries
    a correct checksum, so only comparing the decoded stream with the input reveals it)."""
    real = zstandard.ZstdCompressor

    class Faulty:
        def __init__(self, **options) -> None:
            self.real = real(**options)

        def compress(self, data: bytes) -> bytes:
            return self.real.compress(data)

        def stream_writer(self, sink, closefd: bool = True):
            if flips == "output":
                return self.real.stream_writer(_Flipping(sink, at=100_000), closefd=closefd)
            return _Flipping(self.real.stream_writer(sink, closefd=closefd), at=100_000)

    monkeypatch.setattr(codec.zstandard, "ZstdCompressor", Faulty)


@pytest.mark.parametrize(
    ("flips", "defect"),
    [("output", "a frame is damaged"), ("input", "decodes to other bytes than were written")],
)
def test_a_stream_that_does_not_decode_to_its_input_is_never_committed(
    tmp_path, monkeypatch, flips, defect
):
    _faulty_compressor(monkeypatch, flips)
    wrong = pytest.raises(CorruptArtifact, match=f"the compressed stream is wrong: .*{defect}")
    with wrong, ArtifactWriter(tmp_path / "db.sql", Codec("zstd")) as writer:
        writer.write(DUMP)
        writer.commit()
    assert list(tmp_path.iterdir()) == [], "neither the artifact nor its .partial is left"


@pytest.mark.parametrize("own", [True, False], ids=["own part", "shared part"])
@pytest.mark.parametrize("flips", ["output", "input"])
def test_a_part_that_does_not_decode_to_its_input_is_never_committed(
    tmp_path, monkeypatch, flips, own
):
    """Parts too: a part of its own is decoded in the thread that writes it, the shared
    parts in a thread beside the writer's."""
    _faulty_compressor(monkeypatch, flips)
    wrong = pytest.raises(CorruptArtifact, match="the compressed stream is wrong")
    with wrong, PartedWriter(tmp_path / "uploads.tar", Codec("zstd")) as writer:
        if own:
            writer.own_part(b"", io.BytesIO(DUMP), len(DUMP))
        else:
            writer.write(DUMP)
        writer.commit()
    assert list(tmp_path.iterdir()) == [], "no part and no .partial directory is left"


def test_parts_decoded_when_written_are_verified_by_their_stored_sha256(tmp_path):
    with PartedWriter(tmp_path / "uploads.tar", Codec("zstd")) as writer:
        writer.write(DUMP[:100_000])
        writer.own_part(b"", io.BytesIO(DUMP), len(DUMP))
        record = {**writer.commit(), "kind": "volume"}
    path = tmp_path / record["file"]
    assert record["decoded_when_written"] is True
    checked = verify_artifact(path, record, None, just_written=True)
    assert (checked["content"], checked["parts_read"]) == ("ok", 2)

    part = path / "00000001.zst"
    stored = bytearray(part.read_bytes())
    stored[len(stored) // 2] ^= 0x01
    part.write_bytes(bytes(stored))
    with pytest.raises(CorruptArtifact, match="00000001.zst: sha256 does not match"):
        verify_artifact(path, record, None, just_written=True)


def test_a_stream_decoded_when_written_is_verified_by_its_stored_sha256(tmp_path):
    with ArtifactWriter(tmp_path / "db.sql", Codec("zstd")) as writer:
        for start in range(0, len(DUMP), 1 << 20):
            writer.write(DUMP[start : start + (1 << 20)])
        record = {**writer.commit(), "kind": "mysql"}
    path = tmp_path / record["file"]
    assert record["decoded_when_written"] is True
    assert zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()) == DUMP
    checked = verify_artifact(path, record, None, just_written=True)
    assert checked["content"] == "ok, decoded when written"

    stored = bytearray(path.read_bytes())
    stored[len(stored) // 2] ^= 0x01
    path.write_bytes(bytes(stored))
    for just_written in (True, False):
        with pytest.raises(CorruptArtifact, match="sha256 does not match"):
            verify_artifact(path, record, None, just_written=just_written)


def test_an_encrypted_stream_is_still_decoded_by_the_verify(tmp_path):
    """Below the compressor lies age: the writer cannot decode what reaches the disk, so
    the verify decrypts and decompresses it as before."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(str(identity) + "\n")
    sealed = Codec("zstd", recipients=(str(identity.to_public()),))
    with ArtifactWriter(tmp_path / "out" / "db.sql", sealed) as writer:
        writer.write(DUMP)
        record = {**writer.commit(), "kind": "mysql"}
    assert "decoded_when_written" not in record
    path = tmp_path / "out" / record["file"]
    checked = verify_artifact(path, record, key_file, just_written=True)
    assert checked == {"file": record["file"], "sha256": "ok", "content": "ok", "complete": True}
