"""`xiehe-backup verify ID|--all`: re-check backups; a bad one is marked failed-verification.
`verify --remote NAME ID`: the off-site copy's checksums, as the remote computes them."""

from __future__ import annotations

import argparse
import sys

from producers.cli import common
from workers.offsite import catalog
from workers.offsite.verify import verify_remote
from workers.ops.verify import verify_backups


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-check backups' checksums and contents")
    p.add_argument("id", nargs="?", help="the backup to verify")
    p.add_argument("--all", action="store_true", help="verify every backup")
    p.add_argument("--remote", metavar="NAME", help="verify the copy on off-site remote NAME")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.id) == bool(args.all):
        print("xiehe-backup verify: give one backup ID or --all", file=sys.stderr)
        return 2
    if args.remote:
        return remote(args)
    result = verify_backups(common.settings(), None if args.all else [args.id])
    for r in result["checked"]:
        print(f"{r['id']}  {'verified' if r['ok'] else 'FAILED: ' + r['cause']}")
    if not result["checked"]:
        print("no backups to verify")
    return 1 if result["failed"] else 0


def remote(args: argparse.Namespace) -> int:
    transport = common.remote(args.remote)
    backup_ids = [args.id] if args.id else [m["id"] for m in catalog.manifests(transport)]
    failed = 0
    for backup_id in backup_ids:
        r = verify_remote(transport, backup_id)
        failed += not r["ok"]
        verdict = f"verified on {r['remote']}" if r["ok"] else "FAILED: " + "; ".join(r["problems"])
        print(f"{backup_id}  {verdict}")
    if not backup_ids:
        print(f"remote {args.remote} holds no backup")
    return 1 if failed else 0
