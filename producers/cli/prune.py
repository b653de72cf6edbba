"""`xiehe-backup prune [--dry-run] [--json] [--remote NAME]`: apply retention; print every
decision.  With --remote, the same policy on what the off-site remote lists."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.offsite.lock import holding
from workers.offsite.prune import prune_remote
from workers.offsite.replicate import local_ids
from workers.ops import settings as ops_settings
from workers.ops.retention import prune


def register(sub) -> None:
    p = sub.add_parser("prune", help="delete backups the retention policy no longer keeps")
    p.add_argument("--dry-run", action="store_true", help="show the decisions, delete nothing")
    p.add_argument("--json", action="store_true", help="the decisions as JSON")
    p.add_argument("--remote", metavar="NAME", help="prune off-site remote NAME instead")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.remote:
        settings, transport = common.settings(), common.remote(args.remote)
        with holding(common.broker(settings), settings, args.remote, "prune"):
            policy, mine = ops_settings.load().policy, local_ids(common.tree())
            result = prune_remote(transport, policy, dry_run=args.dry_run, sendable=mine)
    else:
        result = prune(common.settings(), dry_run=args.dry_run)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    for d in result["decisions"]:
        verdict = "keep" if d["keep"] else ("would delete" if args.dry_run else "deleted")
        print(f"{d['id']:16} {verdict:13} {', '.join(d['rules'])}")
    if args.remote:
        return 0
    if args.dry_run:
        size = common.human_bytes(result["would_free_bytes"])
        print(f"would free {size} (dry run: nothing deleted)")
    else:
        print(
            f"deleted {len(result['deleted'])}, freed {common.human_bytes(result['freed_bytes'])}"
        )
    return 0
