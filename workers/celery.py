"""The Celery app: Redis broker and result backend, settings fit for tasks of hours."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import task_postrun, worker_process_init, worker_ready

from workers.config import _secret, worker_limits
from workers.liveness import Announce

BROKER_URL = _secret(os.environ, "XIEHE_BROKER_URL") or "redis://127.0.0.1:6379/0"
# A pool process peaks at 100-170 MB in a backup of the 0.5 GB bench set, whatever its size.
# One whose peak passed the bound is replaced once its step has ended: a leak in any library
# cannot grow a long-lived worker without bound (a backstop: the steps' own buffers are given
# back, workers/memory.py).  0: never replaced.
LONGEST_RUN, MAX_POOL_PROCESS_MB = worker_limits(os.environ)

app = Celery(
    "xiehe_backup",
    broker=BROKER_URL,
    backend=BROKER_URL,
    include=["workers.tasks", "workers.schedule"],
)
app.conf.update(
    task_default_queue=os.environ.get("XIEHE_QUEUE", "xiehe-backup"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # A step that dies with its worker is delivered again, never lost ...
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # ... and never delivered twice while it still runs: the visibility timeout is above
    # the longest run, and the hard time limit below it.
    broker_transport_options={"visibility_timeout": LONGEST_RUN + 3600},
    result_backend_transport_options={"visibility_timeout": LONGEST_RUN + 3600},
    task_soft_time_limit=LONGEST_RUN,
    task_time_limit=LONGEST_RUN + 300,
    broker_connection_retry_on_startup=True,
    result_expires=30 * 24 * 3600,
    # No STARTED state: each step sets PROGRESS as it begins (workers/progress.py), and
    # nothing reads a task's arguments back from the backend (Flower has them from events).
    task_send_sent_event=True,
    worker_send_task_events=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_max_memory_per_child=MAX_POOL_PROCESS_MB * 1024 or None,  # KiB
    timezone=os.environ.get("XIEHE_TIMEZONE") or os.environ.get("TZ") or "UTC",
)

app.steps["consumer"].add(Announce)  # which queues this worker takes (workers/liveness.py)

# The beat schedule (redbeat, profile, overrides) is read from the environment there.
from workers.schedule import configure  # noqa: E402

configure(app, os.environ)


@worker_ready.connect
def _start_reaper(**_) -> None:
    """Runs whose worker died are ended by the workers still alive (workers/reaper.py)."""
    from workers import reaper

    reaper.start()


@worker_process_init.connect
def _configure_memory(**_) -> None:
    from workers import memory

    memory.configure()


@task_postrun.connect
def _give_back_memory(**_) -> None:
    """Each process that runs steps gives what a step freed back (workers/memory.py)."""
    from workers import memory

    memory.give_back()
