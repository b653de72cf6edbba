"""Live progress of a run: for the CLI and `status` (a Redis hash), for Flower (task events).

Flower builds its task list from events, not from the result backend, so progress is also
sent as a `task-progress` event whose `result` field carries "bytes done of total".
"""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu.exceptions import OperationalError

from workers.units import human_bytes

RUN_KEY = "xiehe:run:"
RUN_TTL = 7 * 24 * 3600
EVERY = 0.5  # seconds between updates: progress must not cost throughput


def run_key(run_id: str) -> str:
    return RUN_KEY + run_id


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
