"""`xiehe-backup verify ID|--all`: re-check backups; a bad one is marked failed-verification."""

from __future__ import annotations

import argparse
import sys

from producers.cli import common
from workers.ops.verify import verify_backups


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-check backups' checksums and contents")
    p.add_argument("id", nargs="?", help="the backup to verify")
    p.add_argument("--all", action="store_true", help="verify every backup")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.id) == bool(args.all):
        print("xiehe-backup verify: give one backup ID or --all", file=sys.stderr)
        return 2
    result = verify_backups(common.settings(), None if args.all else [args.id])
    for r in result["checked"]:
        print(f"{r['id']}  {'verified' if r['ok'] else 'FAILED: ' + r['cause']}")
    if not result["checked"]:
        print("no backups to verify")
    return 1 if result["failed"] else 0
