"""Which backups to keep: keep-last, grandfather-father-son, keep-within, pinned.

Like restic's `forget`: walking the good backups newest first, the first one met in a
day (week, month) is that period's keeper, until D (W, M) periods are kept.  Only a
verified backup is "good": a failed or unverified one never fills a slot and is never
kept, so it cannot crowd out a backup that restores.  Whatever the policy, the newest
verified backup and the last N good ones are kept.  Pure: no clock, no files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PREMIGRATION = "pre-migration"
NOT_GOOD = "not verified: never kept"
EXPIRED = "no rule keeps it"


@dataclass(frozen=True)
class Policy:
    last: int = 7
    daily: int = 7
    weekly: int = 4
    monthly: int = 6
    within: timedelta = timedelta(0)
    premigration: timedelta = timedelta(days=30)


def when(backup: dict) -> datetime:
    """The backup's time, aware (a naive time is taken as this host's local time)."""
    moment = datetime.fromisoformat(backup["created_at"])
    return moment if moment.tzinfo else moment.astimezone()


def is_good(backup: dict) -> bool:
    return backup.get("status") == "verified" and backup.get("verified", True) is not False


def pinned_until(backup: dict, policy: Policy) -> datetime | None:
    if backup.get("pinned_until"):
        return when({"created_at": backup["pinned_until"]})
    if (backup.get("reason") or "").startswith(PREMIGRATION):
        return when(backup) + policy.premigration
    return None


# Period buckets use the backup's own wall clock: a 23:30 backup belongs to its local day.
PERIODS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("monthly", lambda t: t.strftime("%Y-%m")),
)


def _period_keepers(good: list[dict], count: int, bucket: Callable[[datetime], str]) -> dict:
    """{id: bucket} of the newest backup of each of the `count` newest periods."""
    kept: dict[str, str] = {}
    seen: set[str] = set()
    for backup in good:  # newest first
        if len(seen) >= count:
            break
        key = bucket(when(backup))
        if key not in seen:
            seen.add(key)
            kept[backup["id"]] = key
    return kept


def decide(backups: list[dict], policy: Policy, now: datetime | None = None) -> list[dict]:
    """[{id, keep, rules}] oldest first; `rules` names every rule that keeps the backup,
    or, for one to delete, why nothing keeps it."""
    now = now or datetime.now(UTC)
    ordered = sorted(backups, key=lambda b: (when(b), b["id"]), reverse=True)
    good = [b for b in ordered if is_good(b)]
    rules: dict[str, list[str]] = {b["id"]: [] for b in ordered}
    if good:
        rules[good[0]["id"]].append("newest verified")
    for backup in good[: policy.last]:
        rules[backup["id"]].append(f"last {policy.last}")
    for period, bucket in PERIODS:
        for backup_id, key in _period_keepers(good, getattr(policy, period), bucket).items():
            rules[backup_id].append(f"{period} {key}")
    if policy.within and good:
        # Measured from the newest good backup, as restic does: if backups stop, the
        # last ones are not aged out by the clock alone.
        newest = when(good[0])
        for backup in good:
            if newest - when(backup) <= policy.within:
                rules[backup["id"]].append(f"within {_span(policy.within)}")
    for backup in good:
        until = pinned_until(backup, policy)
        if until and now < until:
            rules[backup["id"]].append(f"pinned until {until.date().isoformat()}")
    out = []
    for backup in reversed(ordered):
        kept = rules[backup["id"]]
        why = kept or [EXPIRED if is_good(backup) else NOT_GOOD]
        out.append({"id": backup["id"], "keep": bool(kept), "rules": why})
    return out


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m"
