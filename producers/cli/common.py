"""What verbs share: settings, the broker, worker liveness, following a run."""

from __future__ import annotations

import sys
import time

import redis

from workers import config, liveness
from workers.config import Settings
from workers.errors import BackupError
from workers.offsite import settings as offsite_settings
from workers.offsite.rclone import Rclone
from workers.progress import EndSignal
from workers.progress import read as read_progress
from workers.store.layout import Tree
from workers.units import human_bytes

SILENCE_CHECK = 15.0  # seconds without progress before asking whether a worker is alive
BROKER_GRACE = 120.0  # seconds the broker may be unreachable (a restart) while following
# Between two reads of the progress hash (one HGETALL); the end of a run cuts it short.
POLL = 0.05


def settings() -> Settings:
    return config.load()


def remote(name: str) -> Rclone:
    """The transport to off-site remote `name` (XIEHE_OFFSITE); unknown names are refused."""
    offsite = offsite_settings.load()
    return Rclone(offsite.remote(name), offsite)


def tree() -> Tree:
    return Tree(settings().backup_dir)


def broker(s: Settings) -> redis.Redis:
    client = redis.Redis.from_url(s.broker_url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        msg = f"broker: cannot reach the queue's Redis ({exc}); check XIEHE_BROKER_URL"
        raise BackupError(msg) from None
    return client


def unserved(client: redis.Redis, queues: list[str]) -> list[str] | None:
    """The queues no live worker consumes (workers/liveness.py); None when the broker
    cannot be asked right now."""
    try:
        return liveness.unserved(client, queues)
    except redis.RedisError:
        return None


def _no_worker(queues: list[str]) -> str:
    return (
        f"no xiehe-backup worker is running on queue {', '.join(queues)}: start one with "
        f"`celery -A workers worker -Q {','.join(queues)}`"
    )


def require_worker(client: redis.Redis, queues: list[str]) -> None:
    """Refuse a run that no worker would take: each of its queues needs a live worker."""
    missing = unserved(client, queues)
    if missing is None:
        raise BackupError("broker: the queue's Redis did not answer (nothing was enqueued)")
    if missing:
        raise BackupError(f"{_no_worker(missing)} (nothing was enqueued)")


def follow(client: redis.Redis, run_id: str, queues: list[str], out=sys.stderr) -> dict:
    """Show a run's progress until it ends; return its final progress record.  `queues`:
    those of the run's steps, whose workers are asked for after a silence."""
    ending = EndSignal(client, run_id)
    try:
        return _follow(client, run_id, queues, out, ending)
    finally:
        ending.close()


def _follow(client: redis.Redis, run_id: str, queues: list[str], out, ending: EndSignal) -> dict:
    live = out.isatty()
    last_line, watchdog = "", Watchdog(client, run_id, queues)
    shown: set[str] = set()  # a log gets one line per step, also when steps run side by side
    while True:
        state = _read_through_restarts(client, run_id, out)
        status = state.get("status", "queued")
        line = _render(state)
        if line != last_line:
            if live:
                print("\r\033[K" + line, end="", file=out, flush=True)
            elif state.get("step", "") not in shown or status in ("succeeded", "failed"):
                shown.add(state.get("step", ""))
                print(line, file=out, flush=True)
            last_line = line
        if status in ("succeeded", "failed"):
            if live:
                print(file=out)
            return state
        watchdog.check(state)
        ending.wait(POLL)


class Watchdog:
    """Asks for the run's workers once its progress has been silent SILENCE_CHECK seconds:
    a run whose queue lost its last worker would otherwise be waited for until a timeout."""

    def __init__(self, client: redis.Redis, run_id: str, queues: list[str]) -> None:
        self.client, self.run_id, self.queues = client, run_id, queues
        self.seen, self.since = None, time.monotonic()

    def check(self, state: dict) -> None:
        """BackupError once a queue of the run has had no worker after such a silence."""
        if state.get("updated_at") != self.seen:
            self.seen, self.since = state.get("updated_at"), time.monotonic()
        elif time.monotonic() - self.since > SILENCE_CHECK:
            missing = unserved(self.client, self.queues)  # None: the broker is restarting
            if missing:
                raise BackupError(
                    f"run {self.run_id}: {_no_worker(missing)}; the run stays queued and "
                    "resumes when one starts"
                )
            self.since = time.monotonic()


def _read_through_restarts(client: redis.Redis, run_id: str, out) -> dict:
    """The run's progress; a broker restarting is waited for (the run goes on meanwhile)."""
    deadline = time.monotonic() + BROKER_GRACE
    while True:
        try:
            return read_progress(client, run_id)
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise BackupError(
                    f"broker: the queue's Redis is unreachable ({exc}); run {run_id} may go on: "
                    f"see `xiehe-backup list --all` once it is back"
                ) from None
            print(f"broker unreachable ({exc}); retrying", file=out, flush=True)
            time.sleep(1.0)


def _render(state: dict) -> str:
    step = state.get("step", "waiting for a worker")
    index = f"[{state.get('step_index', '?')}/{state.get('steps_total', '?')}]"
    moved = human_bytes(float(state.get("bytes") or 0))
    if state.get("total"):
        moved += f" of {human_bytes(float(state['total']))}"
    rate = human_bytes(float(state.get("rate") or 0)) + "/s"
    status = state.get("status", "queued")
    if status == "failed":
        return f"{index} {step} FAILED: {state.get('error', '')}"
    if status == "succeeded":
        return f"{index} {step} done"
    return f"{index} {step} {moved} {rate}"
