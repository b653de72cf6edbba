"""Live progress of a run: for the CLI and `status` (a Redis hash), for Flower (task events).

Flower builds its task list from events, not from the result backend, so progress is also
sent as a `task-progress` event whose `result` field carries "bytes done of total".
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis
from kombu.exceptions import OperationalError

from workers.units import human_bytes

RUN_KEY = "xiehe:run:"
ENDED_CHANNEL = "xiehe:run-ended:"
RUN_TTL = 7 * 24 * 3600
EVERY = 0.5  # seconds between updates: progress must not cost throughput
ENDED = ("succeeded", "failed")


def run_key(run_id: str) -> str:
    return RUN_KEY + run_id


def ended_channel(run_id: str) -> str:
    return ENDED_CHANNEL + run_id


class Progress:
    """Counts the bytes a step moves and publishes step, bytes and rate, throttled."""

    def __init__(self, client: redis.Redis, run_id: str, step: str, task: Any = None) -> None:
        self.client, self.run_id, self.step, self.task = client, run_id, step, task
        self.bytes = 0
        self.total: int | None = None  # set by steps that know (or estimate) their size
        self.started = time.monotonic()
        self._last = 0.0

    def publish(self, **fields: Any) -> None:
        fields = {k: ("" if v is None else v) for k, v in fields.items()}
        fields["updated_at"] = time.time()
        try:  # progress is advisory (the journal on disk is the record): a broker restart
            # must not fail the step
            with self.client.pipeline() as pipe:
                pipe.hset(run_key(self.run_id), mapping=fields)
                pipe.expire(run_key(self.run_id), RUN_TTL)
                if fields.get("status") in ENDED:  # wakes the followers (EndSignal) at once
                    pipe.publish(ended_channel(self.run_id), fields["status"])
                pipe.execute()
            task = self.task
            if task is not None and getattr(task, "request", None) and task.request.id:
                meta = {"run": self.run_id, **fields}
                task.update_state(state="PROGRESS", meta=meta)
                task.send_event("task-progress", result=self.describe(), **meta)
        except (redis.RedisError, OperationalError):
            pass

    def describe(self) -> str:
        done = human_bytes(self.bytes)
        return f"{self.step}: {done} of {human_bytes(self.total)}" if self.total else done

    def begin(self, index: int, total: int) -> None:
        self.publish(
            status="running", step=self.step, step_index=index, steps_total=total, bytes=0, rate=0
        )

    def add(self, n: int) -> None:
        self.bytes += n
        now = time.monotonic()
        if now - self._last >= EVERY:
            self._last = now
            rate = self.bytes / max(now - self.started, 1e-6)
            self.publish(step=self.step, bytes=self.bytes, total=self.total, rate=int(rate))


def read(client: redis.Redis, run_id: str) -> dict[str, str]:
    raw = client.hgetall(run_key(run_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


class EndSignal:
    """A follower's pause between two reads of a run's progress, cut short when the run
    ends: the end is also published, so a follower learns it at once rather than at its
    next read.  The progress hash stays the record: an end published before the
    subscription, or lost with the broker, is read there at the next poll."""

    def __init__(self, client: redis.Redis, run_id: str) -> None:
        self._pubsub: Any = None
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(ended_channel(run_id))
            self._pubsub = pubsub
        except redis.RedisError:
            pass  # plain polling

    def wait(self, seconds: float) -> bool:
        """Pause up to `seconds`; True if cut short by the run's end."""
        deadline = time.monotonic() + seconds
        while self._pubsub is not None and (left := deadline - time.monotonic()) > 0:
            try:  # None for the subscription's own confirmation: wait on
                if self._pubsub.get_message(timeout=left) is not None:
                    return True
            except redis.RedisError:
                self.close()
        time.sleep(max(deadline - time.monotonic(), 0))
        return False

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None
