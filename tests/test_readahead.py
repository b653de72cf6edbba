"""Chunks read ahead by a thread come in order, an error after the chunks before it, and a
reader that stops early stops the thread and closes the source."""

from __future__ import annotations

import threading

import pytest

from workers.store.codec import ChunkStream, CorruptArtifact
from workers.store.readahead import read_ahead


def test_chunks_in_order_then_the_sources_error():
    def source():
        yield from (b"a", b"b", b"c")
        raise CorruptArtifact("part 00000003.zst: sha256 does not match PARTS")

    got = []
    with pytest.raises(CorruptArtifact, match="00000003"):
        for chunk in read_ahead(source(), depth=1):
            got.append(chunk)
    assert got == [b"a", b"b", b"c"]


def test_a_reader_that_stops_early_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            for i in range(1000):
                yield bytes([i % 256])
        finally:
            closed.set()

    reader = read_ahead(source(), depth=2)
    assert next(reader) == b"\x00"
    reader.close()  # joins the thread, which closed the source as it ended
    assert closed.is_set()
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_closing_the_stream_over_them_stops_the_thread_at_once():
    closed = threading.Event()

    def source():
        try:
            while True:
                yield b"x" * 4096
        finally:
            closed.set()

    with ChunkStream(read_ahead(source(), depth=2)) as stream:
        assert stream.read(10) == b"x" * 10
    assert closed.is_set()  # not left to the garbage collector
