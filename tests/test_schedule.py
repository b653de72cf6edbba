"""The beat schedule with real beat processes: one backup per tick, catch-up once, standby."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redbeat.decoder import RedBeatJSONEncoder

from tests.conftest import base_env
from tests.support.servers import celery, spawn, started, stop_group
from workers.config import ConfigError
from workers.schedule import beat_schedule

BACKUP_ENTRY = "xiehe:redbeat:xiehe-backup"
ONLY_BACKUP = {f"XIEHE_SCHEDULE_{job}": "off" for job in ("PRUNE", "VERIFY", "DRILL", "HEALTH")}


class Beat:
    """A real `celery -A workers beat` process."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.logfile = logfile
        argv = celery("beat", "-l", "info", "-S", "redbeat.RedBeatScheduler", "--pidfile=")
        self.proc = spawn(argv, env, logfile)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"beat exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"beat never logged {text!r}:\n{self.log()}"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.proc, sig)


@pytest.fixture
def beats(tmp_path):
    yield from started(Beat, tmp_path, "beat")


@pytest.fixture
def stack(tmp_path, redis_server, worker_factory):
    """A private broker, a Redis to back up, a worker: backups take a few seconds."""
    broker = redis_server()
    target = redis_server()
    target.client().set("patient:1", "x" * 1000)
    env = base_env(broker.url, tmp_path / "backups")
    env.update(XIEHE_REDIS_URL=target.url, XIEHE_TIMEZONE="UTC", **ONLY_BACKUP)
    worker_factory(env)
    return broker, env, tmp_path / "backups"


def scheduled_runs(backup_dir: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in (backup_dir / ".runs").glob("*.json")]
    return [r for r in runs if r.get("reason") == "scheduled"]


def wait_finished(backup_dir: Path, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = scheduled_runs(backup_dir)
        if len(runs) >= count and all(r["status"] in ("succeeded", "failed") for r in runs):
            return runs
        time.sleep(0.5)
    return scheduled_runs(backup_dir)


def sleep_past_next_minute(margin: float = 8.0) -> None:
    time.sleep(60 - time.time() % 60 + margin)


def test_profiles_and_overrides():
    assert str(beat_schedule({})["xiehe-backup"]["schedule"]) == str(
        beat_schedule({"XIEHE_SCHEDULE_BACKUP": "0 2 * * *"})["xiehe-backup"]["schedule"]
    )
    weekly = beat_schedule({"XIEHE_PROFILE": "development"})["xiehe-backup"]["schedule"]
    assert weekly.day_of_week == {0} and weekly.hour == {2} and weekly.minute == {0}
    assert "xiehe-drill" not in beat_schedule({"XIEHE_SCHEDULE_DRILL": "off"})
    for bad in ("0 2 * *", "61 2 * * *", "x y z w v"):
        with pytest.raises(ConfigError, match="XIEHE_SCHEDULE_PRUNE"):
            beat_schedule({"XIEHE_SCHEDULE_PRUNE": bad})
    with pytest.raises(ConfigError, match="XIEHE_PROFILE"):
        beat_schedule({"XIEHE_PROFILE": "staging"})


@pytest.mark.timeout(300)
def test_two_beats_fire_one_backup_per_tick_and_the_standby_takes_over(stack, beats):
    broker, env, backup_dir = stack
    env = {**env, "XIEHE_SCHEDULE_BACKUP": "* * * * *"}
    if time.time() % 60 > 45:  # start well before a tick, so both beats are up at the first
        sleep_past_next_minute(margin=1)
    first, second = beats(env), beats(env)
    first.wait_for("beat: Starting")
    second.wait_for("beat: Starting")
    time.sleep(3)
    holders = [b for b in (first, second) if "Acquired lock" in b.log()]
    assert len(holders) == 1, "exactly one beat holds the lock"
    active, standby = holders[0], ({first, second} - set(holders)).pop()

    sleep_past_next_minute()  # tick 1: fired by the lock holder only
    assert len(wait_finished(backup_dir, 1)) == 1
    active.stop()  # a clean stop releases the lock: the standby takes over
    standby.wait_for("Acquired lock", timeout=40)
    sleep_past_next_minute()  # tick 2: fired by the former standby
    standby.stop()

    runs = wait_finished(backup_dir, 2)
    assert len(runs) == 2, [r["id"] for r in runs]
    assert all(r["status"] == "succeeded" for r in runs), runs
    assert len({r["id"][:13] for r in runs}) == 2, "one backup in each minute"


def rewind_last_run(broker, days: float) -> None:
    """Pretend beat last ran `days` ago: it was down, and ticks were missed meanwhile."""
    last = datetime.now(UTC) - timedelta(days=days)
    broker.client().hset(
        BACKUP_ENTRY, "meta", json.dumps({"last_run_at": last}, cls=RedBeatJSONEncoder)
    )


@pytest.mark.timeout(300)
def test_missed_ticks_run_once_within_the_catchup_window_and_never_after(stack, beats):
    broker, env, backup_dir = stack
    tick = datetime.now(UTC) - timedelta(minutes=3)
    daily = {**env, "XIEHE_SCHEDULE_BACKUP": f"{tick.minute} {tick.hour} * * *"}

    # beat ran once (creating the entry), then was down for three days
    beat = beats({**daily, "XIEHE_SCHEDULE_CATCHUP_SECONDS": "600"})
    beat.wait_for("Acquired lock")
    beat.stop()
    assert scheduled_runs(backup_dir) == []
    rewind_last_run(broker, days=3)

    # back up within the window (the tick was 3 min ago, window 10 min): runs once, not 3x
    again = [beats({**daily, "XIEHE_SCHEDULE_CATCHUP_SECONDS": "600"}) for _ in range(2)]
    time.sleep(15)
    for b in again:
        b.stop()
    runs = wait_finished(backup_dir, 1)
    assert len(runs) == 1 and runs[0]["status"] == "succeeded", runs

    # down again, and back only after the window (1 min): the missed tick is skipped
    rewind_last_run(broker, days=3)
    late = beats({**daily, "XIEHE_SCHEDULE_CATCHUP_SECONDS": "60"})
    late.wait_for("Acquired lock")
    time.sleep(10)
    late.stop()
    assert len(scheduled_runs(backup_dir)) == 1
