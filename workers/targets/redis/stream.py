"""An RDB's bytes in flight: one thread reads them (network, file or Docker), the caller's
thread checks, compresses and stores them, with a short bounded queue in between."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from workers.store.codec import CHUNK

PIPELINE_DEPTH = 8  # chunks (of up to CHUNK bytes) read ahead of the compression

Progress = Callable[[int], None]  # called with the bytes moved since the last call
Emit = Callable[[bytes], None]


class _Stopped(Exception):
    """Raised in the reading thread when the consumer gave up."""


def pipelined(produce: Callable[[Emit], None], emit: Emit) -> None:
    """produce(put) in a thread (the network or Docker read), emit (check, compress,
    store) here: reading overlaps compressing.  At most PIPELINE_DEPTH chunks wait in
    between, so memory stays flat; an error on either side ends both and is raised here."""
    chunks: queue.Queue = queue.Queue(maxsize=PIPELINE_DEPTH)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(data: bytes) -> None:
        if stop.is_set():
            raise _Stopped
        chunks.put(data)

    def read() -> None:
        try:
            produce(put)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed over to the caller's thread
            failure.append(exc)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=read, name="redis-read", daemon=True)
    thread.start()
    try:
        while (data := chunks.get()) is not None:
            emit(data)
    except BaseException:
        stop.set()
        while chunks.get() is not None:  # unblock the reader, which then stops
            pass
        raise
    finally:
        thread.join()
    if failure:
        raise failure[0]


def read_all(src: BinaryIO, put: Emit) -> None:
    """Every chunk of src into put, until its end."""
    while chunk := src.read(CHUNK):
        put(chunk)


# capture(produce): produce(sink) streams an RDB into a new artifact and returns how it
# read it; capture returns (how, the artifact's record, the RDB's summary).
Capture = Callable[[Callable[[Emit], str]], tuple[str, dict, dict]]
