"""What verbs share: settings, the broker, worker liveness, following a run."""

from __future__ import annotations

import sys
import time

import redis
from kombu.exceptions import KombuError

from workers import config
from workers.celery import app
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


def workers_alive(timeout: float = 3.0) -> bool | None:
    """Whether any worker answers a ping; None when the broker cannot be asked right now."""
    try:
        return bool(app.control.ping(timeout=timeout, limit=1))  # the first reply is enough
    except (redis.RedisError, OSError, KombuError):
        return None


def require_worker(timeout: float = 3.0) -> None:
    if not workers_alive(timeout):
        raise BackupError(
            "no xiehe-backup worker is running: start one with `celery -A workers worker` "
            "(nothing was enqueued)"
        )


def follow(client: redis.Redis, run_id: str, out=sys.stderr) -> dict:
    """Show a run's progress until it ends; return its final progress record."""
    ending = EndSignal(client, run_id)
    try:
        return _follow(client, run_id, out, ending)
    finally:
        ending.close()


def _follow(client: redis.Redis, run_id: str, out, ending: EndSignal) -> dict:
    live = out.isatty()
    last_line, last_change, last_seen = "", time.monotonic(), None
    shown: set[str] = set()  # a log gets one line per step, also when steps run side by side
    while True:
        state = _read_through_restarts(client, run_id, out)
        status = state.get("status", "queued")
        line = _render(state)
        if state.get("updated_at") != last_seen:
            last_seen, last_change = state.get("updated_at"), time.monotonic()
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
        if time.monotonic() - last_change > SILENCE_CHECK:
            if workers_alive() is False:  # None: the broker is restarting, ask again later
                raise BackupError(
                    f"run {run_id}: no worker is alive; it stays queued and resumes when a "
                    "worker starts (`celery -A workers worker`)"
                )
            last_change = time.monotonic()
        ending.wait(POLL)


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
