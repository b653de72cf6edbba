"""Chunks made by a thread of their own, a few ahead of their reader."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple

_END = object()
DEPTH = 8  # chunks held ahead at most: 8 MiB of 1 MiB chunks


class _Failed(NamedTuple):
    error: BaseException


def read_ahead(chunks: Iterator[bytes], depth: int = DEPTH) -> Iterator[bytes]:
    """`chunks`, iterated in a thread at most `depth` ahead: their making (reading,
    decompressing, hashing) overlaps with what the reader does with each (a volume's
    restore: 1.12 -> 1.01 s, median of 6 alternated runs).  An error of theirs is raised
    here, after the chunks before it; a reader that stops early stops the thread, which
    closes `chunks`."""
    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def make() -> None:
        last: object = _END
        try:
            for chunk in chunks:
                if stop.is_set():
                    break
                ahead.put(chunk)
        except BaseException as exc:  # handed to the reader
            last = _Failed(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        if not stop.is_set():
            ahead.put(last)

    thread = threading.Thread(target=make, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # a put blocked on a full queue returns once drained
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.05)
