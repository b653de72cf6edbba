"""`xiehe-backup status [RUN_ID] [--recent N] [--json]`: the last backup, the last good
one's age, the RPO, and the current and recent runs with every step's state, duration and
progress.  The run journals (.runs/) are the record; the broker's progress hash adds the
live bytes and rate of a running step (and is optional: without a broker, journals only).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import redis

from producers.cli import common
from workers import liveness, progress
from workers.config import Settings
from workers.errors import NotFound
from workers.ops.health import last_good_age_hours
from workers.ops.metrics import binlog_rpo
from workers.store import journal
from workers.store import manifest as manifests

ACTIVE = ("queued", "running")


def register(sub) -> None:
    p = sub.add_parser("status", help="last good backup, RPO, current and recent runs")
    p.add_argument("run_id", nargs="?", help="show this run's steps only")
    p.add_argument("--recent", type=int, default=5, help="how many ended runs to show")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def _live(client: redis.Redis | None, run_id: str) -> dict:
    if client is None:
        return {}
    try:
        return progress.read(client, run_id)
    except redis.RedisError:
        return {}


def _elapsed(started_at: str | None) -> float | None:
    if not started_at:
        return None
    return round((datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds(), 1)


def run_view(record: dict, client: redis.Redis | None) -> dict:
    """A run with one row per planned step: status, duration, and live progress."""
    live = _live(client, record["id"]) if record.get("status") in ACTIVE else {}
    steps = []
    for name in record.get("plan") or list(record.get("steps", {})):
        step = record.get("steps", {}).get(name, {})
        row = {"name": name, "status": step.get("status", "pending")}
        if step.get("status") == "running":
            row["duration_s"] = _elapsed(step.get("started_at"))
            if live.get("step") == name:
                row["bytes"] = int(float(live.get("bytes") or 0))
                row["rate"] = int(float(live.get("rate") or 0))
        else:
            row["duration_s"] = step.get("duration_s")
        if step.get("error"):
            row["error"] = step["error"]
        steps.append(row)
    return {
        "id": record["id"],
        "type": record.get("type", "backup"),
        "status": record.get("status", "?"),
        "reason": record.get("reason", ""),
        "created_at": record.get("created_at"),
        "finished_at": record.get("finished_at"),
        "error": record.get("error"),
        "steps": steps,
    }


def collect(tree, client: redis.Redis | None = None, recent: int = 5, rpo=None) -> dict:
    all_manifests = manifests.read_all(tree)
    last = all_manifests[-1] if all_manifests else None
    good = [m for m in all_manifests if m.get("status") == "verified"]
    age = last_good_age_hours(tree)
    runs = journal.all_runs(tree)
    ended = [r for r in runs if r.get("status") not in ACTIVE]
    return {
        "last_backup": {k: last[k] for k in ("id", "status", "finished_at")} if last else None,
        "last_good_backup": good[-1]["id"] if good else None,
        "last_good_age_hours": round(age, 2) if age is not None else None,
        # The binlog archive's RPO when it runs; else the age of the last good backup.
        "rpo_seconds": rpo if rpo is not None else (round(age * 3600) if age is not None else None),
        "rpo_source": "binlog archive" if rpo is not None else "last good backup",
        "running": [run_view(r, client) for r in runs if r.get("status") in ACTIVE],
        "recent": [run_view(r, client) for r in ended[-recent:]] if recent > 0 else [],
    }


def _broker_or_none(settings) -> redis.Redis | None:
    try:
        return common.broker(settings)
    except Exception:  # noqa: BLE001 - the journals alone still answer
        return None


def _workers(client: redis.Redis | None, settings: Settings) -> dict[str, list[str]] | None:
    """The live workers of the shared and the Docker host's queue; None without a broker."""
    if client is None:
        return None
    try:
        return liveness.consumers(client, settings.queues())
    except redis.RedisError:
        return None


def print_run(view: dict) -> None:
    hb = common.human_bytes
    print(
        f"{view['type']} {view['id']} {view['status']}"
        + (f" ({view['reason']})" if view["reason"] else "")
        + (f": {view['error']}" if view["error"] else "")
    )
    for s in view["steps"]:
        took = f"{s['duration_s']:.1f} s" if s.get("duration_s") is not None else "-"
        moved = f"  {hb(s['bytes'])} at {hb(s['rate'])}/s" if "bytes" in s else ""
        print(f"  {s['name']:18} {s['status']:10} {took:>9}{moved}")


def run(args: argparse.Namespace) -> int:
    settings = common.settings()
    tree = common.tree()
    client = _broker_or_none(settings)
    if args.run_id:
        record = journal.load(tree, args.run_id)
        if record is None:
            raise NotFound(f"no run {args.run_id} in {tree.root / '.runs'} (see `status`)")
        view = run_view(record, client)
        if args.json:
            print(json.dumps(view, ensure_ascii=False))
        else:
            print_run(view)
        return 0
    result = collect(tree, client, args.recent, binlog_rpo(settings))
    result["workers"] = _workers(client, settings)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    last = result["last_backup"]
    print(f"last backup:      {last['id'] + ' ' + last['status'] if last else 'none'}")
    age = result["last_good_age_hours"]
    print(
        f"last good backup: {result['last_good_backup'] or 'none'}"
        + (f" ({age:.1f} h ago)" if age is not None else "")
    )
    rpo = result["rpo_seconds"]
    print(f"RPO now:          {'-' if rpo is None else f'{rpo:.0f} s'} ({result['rpo_source']})")
    workers = result["workers"]
    heard = "; ".join(f"queue {q}: {', '.join(names) or 'NONE'}" for q, names in workers.items())
    print(f"workers:          {heard if workers is not None else 'unknown (broker unreachable)'}")
    for title, views in (("running", result["running"]), ("recent", result["recent"])):
        print(f"\n{title} runs:" if views else f"\nno {title} runs")
        for view in views:
            print_run(view)
    return 0
