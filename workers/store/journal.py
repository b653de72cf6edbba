"""The run journal: one JSON file per run with every step's status and result.

Steps of one stage run side by side (workers/workflows.py), each holding its own copy of
the run, so a save merges into what is on disk under a file lock: every step keeps the
most advanced record anyone wrote of it, and the first failure of the run stays its cause.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
from pathlib import Path

from workers.store import atomic
from workers.store.layout import Tree

ENDED = ("succeeded", "failed", "abandoned")
FAILED = ("failed", "abandoned")
# What a run's top level says of its end, kept from the copy that recorded it first.
_END_FIELDS = ("status", "failed_step", "error", "recovery", "finished_at")


def _progress(record: dict) -> int:
    return 1 if record.get("status") in ENDED else 0


def merge(old: dict, new: dict) -> dict:
    """`new` (a step's copy of the run) over `old`, losing no step's newer record."""
    steps = dict(old.get("steps", {}))
    for name, record in new.get("steps", {}).items():
        if name not in steps or _progress(record) >= _progress(steps[name]):
            steps[name] = record
    merged = {**old, **new, "steps": steps}
    if old.get("status") in FAILED:  # the first failure stays the cause; a cleanup is added
        merged.update({key: old[key] for key in _END_FIELDS if key in old})
    return merged


def join(runs: list[dict]) -> dict:
    """The copies a stage's steps passed on, as one run."""
    return reduce(merge, runs)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The journals' directory itself is the lock, so no lock file lies in the backup tree;
    where directories cannot be locked (NFS emulates flock with write locks), a 0600 file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)  # which releases the lock


def save(tree: Tree, run: dict, durable: bool = True) -> dict:
    """Merge `run` into its journal; return what the journal now says.  `durable=False`
    for a record a crash may lose (atomic.write_text)."""
    path = tree.journal(run["id"])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(path.parent):
        current = _read(path)
        merged = merge(current, run) if current else run
        atomic.write_json(path, merged, durable)
    return merged


def load(tree: Tree, run_id: str) -> dict | None:
    return _read(tree.journal(run_id))


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def all_runs(tree: Tree) -> list[dict]:
    runs = []
    for path in sorted((tree.root / ".runs").glob("*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return runs
