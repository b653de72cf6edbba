"""`xiehe-backup status [--json]`: the last backup, the last good one's age, running runs."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.ops.health import last_good_age_hours
from workers.store import journal
from workers.store import manifest as manifests


def register(sub) -> None:
    p = sub.add_parser("status", help="last backup, age of the last good one, running runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def collect(tree) -> dict:
    all_manifests = manifests.read_all(tree)
    last = all_manifests[-1] if all_manifests else None
    good = [m for m in all_manifests if m.get("status") == "verified"]
    age = last_good_age_hours(tree)
    return {
        "last_backup": {k: last[k] for k in ("id", "status", "finished_at")} if last else None,
        "last_good_backup": good[-1]["id"] if good else None,
        "last_good_age_hours": round(age, 2) if age is not None else None,
        "running": [
            {"id": r["id"], "type": r.get("type"), "step": _current_step(r)}
            for r in journal.all_runs(tree)
            if r.get("status") in ("queued", "running")
        ],
        # RPO: the age of the last good backup until the binlog archiver reports its own.
        "rpo_seconds": round(age * 3600) if age is not None else None,
        "binlog_archive": None,
    }


def _current_step(run: dict) -> str | None:
    running = [n for n, rec in run.get("steps", {}).items() if rec.get("status") == "running"]
    return running[-1] if running else None


def run(args: argparse.Namespace) -> int:
    result = collect(common.tree())
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
    print(f"RPO now:          {result['rpo_seconds'] or '-'} s")
    for r in result["running"]:
        print(f"running:          {r['id']} {r['type']} in {r['step'] or 'queue'}")
    return 0
