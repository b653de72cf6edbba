"""A long-lived worker gives the buffers its steps free back to the system.

The pattern is a backup's: large buffers made, handed on and freed while small objects
made between them live on.  glibc's own rule (its mmap threshold rises to the largest
block freed) keeps such buffers in the heap, where the small objects pin them: a worker
child grew by about 20 MB a backup of the 0.5 GB bench set, up to 187 MB, until it gave
them back after each step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import cli
from workers import memory

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
BUFFERS = 64  # of 1 MiB each
SAYS = "arenas; what a step freed is given back"  # each process's start-up log line

# Prints the MiB the process still holds once its buffers are freed.
PATTERN = f"""
import os, sys
from workers import memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = rss()
first = b"x" * (4 << 20)  # a large block freed: glibc raises its threshold above it
del first
buffers, survivors = [], []
for _ in range({BUFFERS}):
    buffers.append(b"y" * (1 << 20))
    survivors.append(b"z" * 2000)  # made between the buffers, outliving them
top = b"t" * 8192  # what the next step makes holds the top of the heap
del buffers
if sys.argv[1] == "given back":  # as after each step
    assert memory.give_back()
print((rss() - base) >> 20)
"""


def held_after_freeing(mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", PATTERN, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_freed_buffers_go_back_to_the_system():
    if not memory.give_back():
        pytest.skip("this C library has no malloc_trim (not glibc): nothing to give back")
    held = held_after_freeing("kept")
    # The control: without the fix the pattern keeps most of its buffers, so this test
    # can tell the fix apart from glibc's defaults.
    assert held >= BUFFERS // 2, f"glibc's defaults returned the buffers ({held} MiB held)"
    assert held_after_freeing("given back") <= 4


def test_every_worker_process_applies_it(worker_factory, broker, tmp_path):
    from tests.conftest import base_env

    worker = worker_factory(base_env(broker.url, tmp_path / "backups"), concurrency=2)
    # "ready" may come before both pool processes have run their start-up hook
    deadline = time.monotonic() + 30
    while (log := worker.logfile.read_text()).count(SAYS) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.count(SAYS) == 2, log[-3000:]


def test_a_pool_process_over_its_memory_bound_is_replaced_between_steps(stack, worker_factory):
    """With a bound every pool process passes, each is replaced after each step: the runs
    still complete and verify, the replacements say they give memory back too."""
    _, env = stack
    worker = worker_factory({**env, "XIEHE_WORKER_MAX_MEMORY_MB": "1"})
    for _ in range(2):
        proc = cli(env, "backup", "--reason", "test")
        assert proc.returncode == 0, proc.stderr
        assert "verified and published" in proc.stderr
    log = worker.logfile.read_text()
    # Each pool process says it gives memory back once, when it starts, under its own name.
    started = set(re.findall(r"(ForkPoolWorker-\d+)\] memory: \d+ arenas; what a step freed", log))
    assert len(started) >= 2 * 9, log[-3000:]  # nine steps a backup, each in a new process


def test_a_malformed_memory_bound_stops_the_worker_naming_it(worker_factory, broker, tmp_path):
    from tests.conftest import base_env

    env = {**base_env(broker.url, tmp_path / "backups"), "XIEHE_WORKER_MAX_MEMORY_MB": "1GB"}
    with pytest.raises(RuntimeError, match="XIEHE_WORKER_MAX_MEMORY_MB: expected an integer"):
        worker_factory(env)


def test_each_step_ends_by_giving_memory_back(monkeypatch):
    """The worker's app gives memory back when any task ends (celery's task_postrun)."""
    from celery.signals import task_postrun

    import workers.celery  # noqa: F401 - connects the app's signal handlers

    calls = []
    monkeypatch.setattr(memory, "give_back", lambda: calls.append(1) or True)
    task_postrun.send(sender=None, task_id="t", task=None, args=(), kwargs={}, retval=None)
    assert calls == [1]
