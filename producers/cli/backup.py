"""`xiehe-backup backup [--only mysql,redis,volumes] [--reason TEXT] [--detach]`."""

from __future__ import annotations

import argparse
import sys

from producers.cli import common
from workers import workflows
from workers.config import Settings
from workers.errors import BackupError

KINDS = ("mysql", "redis", "volumes")
HOW_TO_SET = {
    "mysql": "XIEHE_MYSQL_HOST is not set",
    "redis": "XIEHE_REDIS_URL is not set",
    "volumes": "XIEHE_VOLUMES is not set",
}


def register(sub) -> None:
    p = sub.add_parser("backup", help="back up MySQL, Redis and volumes now")
    p.add_argument("--only", default="", help="comma list of kinds: mysql,redis,volumes")
    p.add_argument("--reason", default="manual", help="why (recorded in the manifest)")
    p.add_argument("--detach", action="store_true", help="print the id and return at once")
    p.set_defaults(handler=run)


def select_kinds(settings: Settings, only: str) -> tuple[list[str], dict[str, str]]:
    """The kinds this backup covers, and why each other kind is skipped."""
    asked = [k.strip() for k in only.split(",") if k.strip()] or list(KINDS)
    unknown = [k for k in asked if k not in KINDS]
    if unknown:
        raise BackupError(f"--only: unknown kind {', '.join(unknown)} (use {', '.join(KINDS)})")
    configured = settings.kinds()
    skipped = {k: HOW_TO_SET[k] for k in KINDS if k in asked and k not in configured}
    skipped |= {k: "not selected by --only" for k in KINDS if k not in asked}
    kinds = [k for k in KINDS if k in asked and k in configured]
    if not kinds:
        raise BackupError("nothing to back up: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return kinds, skipped


def enqueue(settings: Settings, kinds: list[str], skipped: dict, reason: str) -> str:
    client = common.broker(settings)
    common.require_worker()
    backup_id = workflows.reserve_id(client)
    run = workflows.new_backup_run(backup_id, kinds, skipped, reason)
    workflows.signature(run).apply_async()
    return backup_id


def run(args: argparse.Namespace) -> int:
    settings = common.settings()
    kinds, skipped = select_kinds(settings, args.only)
    for kind, why in skipped.items():
        print(f"skipping {kind}: {why}", file=sys.stderr)
    backup_id = enqueue(settings, kinds, skipped, args.reason)
    if args.detach:
        print(backup_id)
        return 0
    print(f"backup {backup_id} enqueued ({', '.join(kinds)})", file=sys.stderr)
    state = common.follow(common.broker(settings), backup_id)
    if state.get("status") != "succeeded":
        print(f"backup {backup_id} failed in {state.get('step')}: {state.get('error')}",
              file=sys.stderr)
        print(backup_id)
        return 1
    print(f"backup {backup_id} verified and published in {settings.backup_dir}", file=sys.stderr)
    print(backup_id)
    return 0
