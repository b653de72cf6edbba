"""The beat schedule: what runs when, read from the environment, fired by celery-redbeat.

Profiles (XIEHE_PROFILE): `production` backs up daily at 02:00, `development` weekly
(Sunday 02:00).  Every entry can be replaced by a 5-field cron expression
(XIEHE_SCHEDULE_BACKUP, _PRUNE, _VERIFY, _DRILL, _HEALTH) or turned off with `off`.

Why redbeat: the schedule and each entry's last run live in Redis, and beat holds a Redis
lock while it runs, so a second beat (a standby, a mistaken double deploy) waits for the
lock instead of firing every entry a second time.  A run missed while beat was down fires
once when beat comes back (redbeat keeps the last run time, a crontab is due once however
many ticks it missed), and only if the missed tick is at most
XIEHE_SCHEDULE_CATCHUP_SECONDS old (celery's beat_cron_starting_deadline).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from celery import Celery, shared_task
from celery.schedules import crontab

from workers import config
from workers.config import ConfigError

log = logging.getLogger(__name__)

PROFILES = {
    "production": {
        "backup": "0 2 * * *",
        "prune": "30 3 * * *",
        "verify": "0 4 * * *",
        "drill": "0 5 * * 6",
        "health": "*/15 * * * *",
    },
    "development": {
        "backup": "0 2 * * 0",
        "prune": "30 3 * * 0",
        "verify": "0 4 * * 0",
        "drill": "0 5 1 * *",
        "health": "0 * * * *",
    },
}
OFF = "off"
CATCHUP_DEFAULT = 6 * 3600
MAX_LOOP = 30  # s beat sleeps at most; the lock lives 5 times that


def cron(name: str, expression: str) -> crontab:
    """A 5-field cron expression (minute hour day-of-month month day-of-week) -> crontab."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(f"{name}: expected 5 cron fields, got {expression!r}")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{name}: invalid cron expression {expression!r} ({exc})") from None


def beat_schedule(env: Mapping[str, str]) -> dict[str, dict]:
    """The beat_schedule of the profile, with the environment's overrides."""
    profile = env.get("XIEHE_PROFILE", "production").strip().lower() or "production"
    if profile not in PROFILES:
        raise ConfigError(f"XIEHE_PROFILE: expected one of {', '.join(PROFILES)}, got {profile!r}")
    entries = {}
    for job, default in PROFILES[profile].items():
        name = f"XIEHE_SCHEDULE_{job.upper()}"
        expression = env.get(name, "").strip() or default
        if expression.lower() == OFF:
            continue
        entries[f"xiehe-{job}"] = {
            "task": f"scheduled.{job}",
            "schedule": cron(name, expression),
            # a tick nobody consumed within a day is stale: the next tick replaces it
            "options": {"expires": 24 * 3600},
        }
    return entries


def configure(app: Celery, env: Mapping[str, str]) -> None:
    """Wire the schedule into the app: redbeat on the broker's Redis, timezone, catch-up."""
    timezone = env.get("XIEHE_TIMEZONE", "").strip() or app.conf.timezone or "UTC"
    app.conf.update(
        timezone=timezone,
        beat_scheduler="redbeat.RedBeatScheduler",
        beat_schedule=beat_schedule(env),
        beat_max_loop_interval=MAX_LOOP,
        beat_cron_starting_deadline=config._int(
            env, "XIEHE_SCHEDULE_CATCHUP_SECONDS", CATCHUP_DEFAULT, minimum=1
        ),
        redbeat_redis_url=app.conf.broker_url,
        redbeat_redis_options={},
        redbeat_key_prefix="xiehe:redbeat:",
        redbeat_lock_timeout=MAX_LOOP * 5,
    )


# --- the scheduled tasks: each starts the real work and returns what it started --------------


@shared_task(name="scheduled.backup")
def scheduled_backup() -> str:
    from producers import runs

    backup_id = runs.start_backup(config.load(), reason="scheduled", check_worker=False)["id"]
    log.info("scheduled backup %s enqueued", backup_id)
    return backup_id


@shared_task(name="scheduled.prune")
def scheduled_prune() -> dict:
    from workers.ops.retention import prune

    return prune(config.load())


@shared_task(name="scheduled.verify")
def scheduled_verify() -> dict:
    """Every local backup, then each off-site remote's newest copy."""
    from workers.offsite import settings as offsite_settings
    from workers.offsite.verify import verify_remotes
    from workers.ops import inuse
    from workers.ops.verify import verify_backups

    settings = config.load()
    local = verify_backups(settings, None)
    offsite = verify_remotes(settings, offsite_settings.load(), inuse.broker(settings))
    return {**local, "offsite": offsite}


@shared_task(name="scheduled.drill")
def scheduled_drill() -> dict:
    from workers.ops.drill import drill

    return drill(config.load(), None)


@shared_task(name="scheduled.health")
def scheduled_health() -> dict:
    """Doctor's checks on a schedule; one alert when any fails (the dead man's switch)."""
    from workers.ops.health import scheduled

    return scheduled(config.load())
