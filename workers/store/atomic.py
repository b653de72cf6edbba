"""Write a small file so that readers see the old content or the new, never half of it."""

from __future__ import annotations

import ctypes
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Make a file's data, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


# Up to this many files are fsync-ed one by one: syncfs() writes out whatever any process
# left dirty on the file system too (an incremental backup run just after another job's
# writes waited for them: a third of its time here), which only pays for many files.
FSYNC_EACH_MAX = 32
FSYNC_THREADS = 8


def sync_filesystem(path: Path, files: list[Path]) -> None:
    """Make `files` durable: fsync each, side by side, when they are few, else one syncfs()
    of the file system holding `path` (one journal commit, where fsyncs one by one would
    cost one apiece; fsync each where there is no syncfs)."""
    if getattr(_libc, "syncfs", None) is None or len(files) <= FSYNC_EACH_MAX:
        # Side by side: the file system commits the concurrent ones' metadata in one journal
        # transaction (9 files: 7-9 ms one by one, 2-3 ms side by side here).
        with ThreadPoolExecutor(min(len(files), FSYNC_THREADS) or 1) as pool:
            list(pool.map(fsync_path, files))
        return
    syncfs(path)


def syncfs(path: Path) -> None:
    """Make everything written to the file system holding `path` durable (sync() where
    there is no syncfs)."""
    call = getattr(_libc, "syncfs", None)
    if call is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2  # start writing back dirty pages, without waiting


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range of a file to disk now, so that the fsync at
    the end waits for little: the disk works while the next bytes are compressed.
    `length` 0: to the end of the file."""
    sync_file_range = getattr(_libc, "sync_file_range", None)
    if sync_file_range is not None:
        sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE)


def write_text(path: Path, text: str, durable: bool = True) -> None:
    """`durable=False`: the new content may be lost with a crash (the old one is then
    found), but never half of it; one fsync fewer (the directory's)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_path(path.parent)


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    write_text(path, text, durable)


def move(src: Path, dst: Path) -> None:
    """Rename within the backup tree's file system, durable once it returns."""
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.replace(src, dst)
    fsync_path(dst.parent)
