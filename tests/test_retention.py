"""Retention policy: the GFS set on a long history, the safety rules on random histories."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pytest

from workers.config import ConfigError
from workers.ops import settings as ops_settings
from workers.policy.retention import Policy, decide, is_good

TZ = timezone(timedelta(hours=8))  # the hospital's wall clock
NOW = datetime(2024, 6, 15, 3, 0, tzinfo=TZ)


def backup(day: date, status: str = "verified", reason: str = "scheduled", hour: int = 2) -> dict:
    at = datetime(day.year, day.month, day.day, hour, 0, tzinfo=TZ)
    return {
        "id": at.strftime("%Y%m%d_%H%M%S"),
        "created_at": at.isoformat(),
        "status": status,
        "verified": status == "verified",
        "reason": reason,
    }


def history(failed: set[str]) -> list[dict]:
    """One backup a night for 400 nights up to 2024-06-15; the days in `failed` failed."""
    last = date(2024, 6, 15)
    days = [last - timedelta(days=n) for n in range(400)]
    return [
        backup(d, "failed-verification" if d.isoformat() in failed else "verified") for d in days
    ]


def kept_days(decisions: list[dict]) -> set[str]:
    return {f"{d['id'][:4]}-{d['id'][4:6]}-{d['id'][6:8]}" for d in decisions if d["keep"]}


FAILED = {"2024-06-15", "2024-06-09", "2024-05-31", "2024-03-31"}
GFS = {
    # last 7 and daily 7: the seven newest good nights (06-09 and 06-15 failed)
    "2024-06-14", "2024-06-13", "2024-06-12", "2024-06-11", "2024-06-10", "2024-06-08",
    "2024-06-07",
    # weekly 4: ISO weeks 24, 23 (its Sunday failed: Saturday), 22, 21
    "2024-06-02", "2024-05-26",
    # monthly 6: June, May (31st failed: 30th), April, March (31st failed), Feb, January
    "2024-05-30", "2024-04-30", "2024-03-30", "2024-02-29", "2024-01-31",
}  # fmt: skip


def test_400_days_keep_exactly_the_gfs_set_and_never_a_failed_one():
    decisions = decide(history(FAILED), Policy(7, 7, 4, 6), NOW)
    assert kept_days(decisions) == GFS
    assert len(decisions) == 400
    assert [d["id"] for d in decisions] == sorted(d["id"] for d in decisions)  # oldest first
    failed = [d for d in decisions if d["id"][:8] in {f.replace("-", "") for f in FAILED}]
    assert failed and all(
        not d["keep"] and d["rules"] == ["not verified: never kept"] for d in failed
    )


def test_rules_name_why_each_backup_is_kept_or_deleted():
    rules = {d["id"][:8]: d["rules"] for d in decide(history(FAILED), Policy(7, 7, 4, 6), NOW)}
    assert rules["20240614"] == [
        "newest verified",
        "last 7",
        "daily 2024-06-14",
        "weekly 2024-W24",
        "monthly 2024-06",
    ]
    assert rules["20240608"] == ["last 7", "daily 2024-06-08", "weekly 2024-W23"]
    assert rules["20240330"] == ["monthly 2024-03"]
    assert rules["20240101"] == ["no rule keeps it"]


def test_pinned_pre_migration_backups_are_kept_for_the_configured_time():
    backups = history(FAILED) + [
        backup(date(2024, 5, 20), reason="pre-migration v2.3", hour=14),
        backup(date(2024, 1, 10), reason="pre-migration v2.2", hour=14),
        backup(date(2024, 6, 1), "failed-verification", "pre-migration v2.4", hour=14),
        {**backup(date(2023, 9, 1), hour=14), "pinned_until": "2025-01-01T00:00:00+08:00"},
    ]
    decisions = {d["id"]: d for d in decide(backups, Policy(7, 7, 4, 6), NOW)}
    assert decisions["20240520_140000"]["rules"] == ["pinned until 2024-06-19"]
    assert not decisions["20240110_140000"]["keep"]  # pinned 30 days, long over
    assert not decisions["20240601_140000"]["keep"]  # pinned but failed: worthless
    assert decisions["20230901_140000"]["rules"] == ["pinned until 2025-01-01"]
    later = {d["id"]: d for d in decide(backups, Policy(7, 7, 4, 6), NOW + timedelta(days=5))}
    assert not later["20240520_140000"]["keep"]


def test_keep_within_counts_from_the_newest_good_backup():
    policy = Policy(last=0, daily=0, weekly=0, monthly=0, within=timedelta(hours=72))
    decisions = decide(history(FAILED), policy, NOW + timedelta(days=365))
    assert kept_days(decisions) == {"2024-06-14", "2024-06-13", "2024-06-12", "2024-06-11"}


def test_the_newest_verified_backup_survives_a_policy_that_keeps_nothing():
    decisions = decide(history(FAILED), Policy(0, 0, 0, 0), NOW)
    assert kept_days(decisions) == {"2024-06-14"}
    assert decide([], Policy(), NOW) == []
    only_failed = [backup(date(2024, 6, 1), "failed-verification")]
    assert decide(only_failed, Policy(), NOW)[0]["keep"] is False


def test_an_unverified_backup_never_counts_as_a_keeper():
    backups = [backup(date(2024, 6, d)) for d in (1, 2)]
    backups += [{**backup(date(2024, 6, 3)), "verified": False}]
    backups += [backup(date(2024, 6, 4), status="unverified")]
    decisions = decide(backups, Policy(1, 1, 0, 0), NOW)
    assert [d["keep"] for d in decisions] == [False, True, False, False]


def random_history(rng: random.Random) -> list[dict]:
    start = datetime(2023, 1, 1, tzinfo=TZ)
    out, seen = [], set()
    for _ in range(rng.randint(0, 120)):
        at = start + timedelta(minutes=rng.randint(0, 400 * 24 * 60))
        at = at.astimezone(timezone(timedelta(hours=rng.choice([0, 8]))))
        backup_id = at.strftime("%Y%m%d_%H%M%S")
        if backup_id in seen:
            continue
        seen.add(backup_id)
        status = rng.choice(["verified"] * 4 + ["failed-verification", "unverified"])
        reason = rng.choice(["scheduled", "manual", "pre-migration x"])
        out.append(
            {
                "id": backup_id,
                "created_at": at.isoformat(),
                "status": status,
                "verified": status == "verified",
                "reason": reason,
            }
        )
    return out


def random_policy(rng: random.Random) -> Policy:
    return Policy(
        *(rng.randint(0, 10) for _ in range(4)),
        within=timedelta(hours=rng.choice([0, 1, 48, 500])),
        premigration=timedelta(days=rng.choice([0, 30])),
    )


@pytest.mark.parametrize("seed", range(300))
def test_safety_rules_hold_on_random_histories(seed):
    rng = random.Random(seed)
    backups, policy = random_history(rng), random_policy(rng)
    now = datetime(2024, 2, 1, tzinfo=TZ) + timedelta(days=rng.randint(0, 200))
    decisions = decide(backups, policy, now)
    keep = {d["id"]: d["keep"] for d in decisions}
    assert sorted(keep) == sorted(b["id"] for b in backups)
    good = sorted(
        (b for b in backups if is_good(b)), key=lambda b: datetime.fromisoformat(b["created_at"])
    )
    if good:
        assert keep[good[-1]["id"]], "the newest verified backup is always kept"
    assert all(keep[b["id"]] for b in good[len(good) - policy.last :] if policy.last)
    assert not any(keep[b["id"]] for b in backups if not is_good(b)), "failed never kept"
    for period in ("daily", "weekly", "monthly"):
        slots = sum(1 for d in decisions for r in d["rules"] if r.startswith(period))
        assert slots <= getattr(policy, period)
    # Pruning is stable: what one prune keeps, the next prune keeps too.
    survivors = [b for b in backups if keep[b["id"]]]
    assert all(d["keep"] for d in decide(survivors, policy, now))


def test_ops_settings_defaults_and_errors():
    s = ops_settings.load({})
    assert s.policy == Policy(7, 7, 4, 6, timedelta(0), timedelta(days=30))
    assert s.max_backup_age_hours == 26 and s.df_warn_percent == 85 and s.notify_url is None
    s = ops_settings.load({"XIEHE_KEEP_WITHIN": "1d12h", "XIEHE_KEEP_LAST": "3"})
    assert s.policy.within == timedelta(hours=36) and s.policy.last == 3
    for env, name in (
        ({"XIEHE_KEEP_WITHIN": "2 days"}, "XIEHE_KEEP_WITHIN"),
        ({"XIEHE_KEEP_DAILY": "-1"}, "XIEHE_KEEP_DAILY"),
        ({"XIEHE_DF_WARN_PERCENT": "120"}, "XIEHE_DF_WARN_PERCENT"),
    ):
        with pytest.raises(ConfigError, match=name):
            ops_settings.load(env)


def test_notify_url_may_come_from_a_secret_file_and_stays_out_of_repr(tmp_path):
    secret = tmp_path / "url"
    secret.write_text("https://hooks.example/T0KEN\n")
    s = ops_settings.load({"XIEHE_NOTIFY_URL_FILE": str(secret)})
    assert s.notify_url == "https://hooks.example/T0KEN"
    assert "T0KEN" not in repr(s)
