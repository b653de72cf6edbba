"""`xiehe-backup backup [--only mysql,redis,volumes] [--reason TEXT] [--detach]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from producers.cli import common
from producers.runs import enqueue, select_kinds
from workers import workflows
from workers.errors import NotFound
from workers.store import manifest as manifests
from workers.store.layout import Tree


def register(sub) -> None:
    p = sub.add_parser("backup", help="back up MySQL, Redis and volumes now")
    p.add_argument("--only", default="", help="comma list of kinds: mysql,redis,volumes")
    p.add_argument("--reason", default="manual", help="why (recorded in the manifest)")
    p.add_argument("--detach", action="store_true", help="print the id and return at once")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = common.settings()
    kinds, skipped = select_kinds(settings, args.only)
    for kind, why in skipped.items():
        print(f"skipping {kind}: {why}", file=sys.stderr)
    run = enqueue(settings, kinds, skipped, args.reason)
    backup_id = run["id"]
    if args.detach:
        print(backup_id)
        return 0
    print(f"backup {backup_id} enqueued ({', '.join(kinds)})", file=sys.stderr)
    state = common.follow(common.broker(settings), backup_id, workflows.queues(run, settings))
    if state.get("status") != "succeeded":
        print(
            f"backup {backup_id} failed in {state.get('step')}: {state.get('error')}",
            file=sys.stderr,
        )
        print(backup_id)
        return 1
    print(f"backup {backup_id} verified and published in {settings.backup_dir}", file=sys.stderr)
    for warning in _warnings(settings.backup_dir, backup_id):
        print(f"WARNING: {warning}", file=sys.stderr)
    print(backup_id)
    return 0


def _warnings(backup_dir: Path, backup_id: str) -> list[str]:
    """The published backup's warnings (policy/emptied.py), when its tree is reachable here."""
    try:
        return manifests.read(Tree(backup_dir), backup_id).get("warnings") or []
    except (NotFound, OSError, ValueError):
        return []
