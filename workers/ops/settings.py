"""Settings of the operations (retention, alerts, health), read like workers/config.py."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from workers.config import ConfigError, _int, _secret
from workers.policy.retention import Policy

_DURATION = re.compile(r"(\d+)([wdhm])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class OpsSettings:
    policy: Policy
    notify_url: str | None = field(repr=False)  # a webhook URL often embeds a token
    notify_on_success: bool
    max_backup_age_hours: int
    df_warn_percent: int


def duration(name: str, raw: str) -> timedelta:
    """'48h', '7d', '2w', '1d12h', '90m' (restic's --keep-within style); '' is zero."""
    text = raw.strip().lower()
    if not text:
        return timedelta(0)
    if not re.fullmatch(r"(\d+[wdhm])+", text):
        raise ConfigError(f"{name}: expected a duration like 48h, 7d or 2w, got {raw!r}")
    parts: dict[str, int] = {}
    for number, unit in _DURATION.findall(text):
        parts[_UNITS[unit]] = parts.get(_UNITS[unit], 0) + int(number)
    return timedelta(**parts)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    return raw in ("1", "true", "yes", "on")


def load(env: Mapping[str, str] | None = None) -> OpsSettings:
    env = os.environ if env is None else env
    percent = _int(env, "XIEHE_DF_WARN_PERCENT", 85, minimum=1)
    if percent > 100:
        raise ConfigError(f"XIEHE_DF_WARN_PERCENT: must be at most 100, got {percent}")
    return OpsSettings(
        policy=Policy(
            last=_int(env, "XIEHE_KEEP_LAST", 7),
            daily=_int(env, "XIEHE_KEEP_DAILY", 7),
            weekly=_int(env, "XIEHE_KEEP_WEEKLY", 4),
            monthly=_int(env, "XIEHE_KEEP_MONTHLY", 6),
            within=duration("XIEHE_KEEP_WITHIN", env.get("XIEHE_KEEP_WITHIN", "")),
            premigration=timedelta(days=_int(env, "XIEHE_KEEP_PREMIGRATION_DAYS", 30)),
        ),
        notify_url=(_secret(env, "XIEHE_NOTIFY_URL") or "").strip() or None,
        notify_on_success=_flag(env, "XIEHE_NOTIFY_ON_SUCCESS", False),
        max_backup_age_hours=_int(env, "XIEHE_MAX_BACKUP_AGE_HOURS", 26, minimum=1),
        df_warn_percent=percent,
    )
