"""Start real servers for tests: private redis-servers and Celery workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own in a private directory, which a test may flush or stop."""

    def __init__(self, workdir: Path, *extra: str, port: int | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.AuthenticationError:
                return  # up, with a password
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def spawn(argv: list[str], env: dict[str, str], logfile: Path) -> subprocess.Popen:
    """A real child process in a session of its own, writing to `logfile`."""
    log = open(logfile, "ab")  # noqa: SIM115 - the process owns it for its lifetime
    return subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Signal the process and its children; SIGKILL them if they outlive 30 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def started(kind, tmp_path: Path, prefix: str) -> Iterator[Callable[[dict], object]]:
    """A fixture's body: `make(env)` starts a `kind(env, logfile)`; all stopped at the end."""
    made: list = []

    def make(env: dict[str, str]):
        made.append(kind(env, tmp_path / f"{prefix}{len(made)}.log"))
        return made[-1]

    yield make
    for process in made:
        process.stop()


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers", *args]


class Worker:
    """A real `celery -A workers worker` process with its own environment."""

    def __init__(
        self, env: dict[str, str], logfile: Path, concurrency: int = 2, queues: str = ""
    ) -> None:
        self.env = env
        self.logfile = logfile
        self.concurrency = concurrency
        self.queues = queues
        self.name = f"test{free_port()}@%h"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        queues = ["-Q", self.queues] if self.queues else []
        argv = celery("worker", "-l", "info", "-c", str(self.concurrency), "-n", self.name,
                      "--without-gossip", "--without-mingle", *queues)  # fmt: skip
        self.proc = spawn(argv, self.env, self.logfile)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.logfile.read_text()[-3000:]}")
            if b"ready." in self.logfile.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError("worker did not become ready")

    def stop(self) -> None:
        stop_group(self.proc)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool), as a crash would."""
        stop_group(self.proc, signal.SIGKILL)
