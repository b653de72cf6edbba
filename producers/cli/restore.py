"""`xiehe-backup restore ID --yes [--only mysql|redis|volumes|db:NAME|volume:NAME] [--detach]`.

`restore ID --from NAME` takes the backup from off-site remote NAME (a new host whose
local tree is gone): the run's fetch step brings it into the local tree first.

Point in time: `restore --to "YYYY-MM-DD HH:MM:SS" [--dry-run]` (or --to-position FILE:POS,
--to-gtid D-S-N) picks the backup itself (workers/pitr.py) and replays the archived binlog.
"""

from __future__ import annotations

import argparse
import sys

from producers.cli import common
from workers import pitr, workflows
from workers.errors import BackupError
from workers.offsite import catalog
from workers.steps.restore_scope import kinds_of, parse_only, selected_artifacts
from workers.store import manifest as manifests


def register(sub) -> None:
    p = sub.add_parser(
        "restore", help="restore a backup (stops services, saves current data first)"
    )
    p.add_argument("id", nargs="?", help="the backup id (YYYYMMDD_HHMMSS), see `xiehe-backup list`")
    p.add_argument("--to", help="point in time 'YYYY-MM-DD HH:MM:SS' (server time; or +08:00)")
    p.add_argument("--to-position", help="point in time as a binlog position FILE:POS")
    p.add_argument("--to-gtid", help="point in time as a GTID D-S-N (that transaction included)")
    p.add_argument("--dry-run", action="store_true", help="print the point-in-time plan only")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--only", default="", help="mysql, redis, volumes, db:NAME or volume:NAME")
    p.add_argument(
        "--from", dest="remote", metavar="NAME", help="take the backup from off-site remote NAME"
    )
    p.add_argument("--detach", action="store_true", help="print the run id and return at once")
    p.set_defaults(handler=run)


def confirm(manifest: dict, artifacts: list[dict], stop: tuple[str, ...]) -> bool:
    print(
        f"Restoring backup {manifest['id']} ({manifest['created_at']}) replaces:", file=sys.stderr
    )
    for a in artifacts:
        label = {"mysql": "database", "redis": "Redis data", "volume": "volume"}[a["kind"]]
        print(f"  {label} {a['source']}", file=sys.stderr)
    if stop:
        print(f"and stops then restarts: {', '.join(stop)}", file=sys.stderr)
    print("The current data is backed up first.", file=sys.stderr)
    if not sys.stdin.isatty():
        raise BackupError("refusing to restore without --yes: no terminal to ask for confirmation")
    answer = input("Type the backup id to go on: ").strip()
    return answer == manifest["id"]


def run(args: argparse.Namespace) -> int:
    settings = common.settings()
    only = parse_only(args.only)
    plan = None
    if (args.to or args.to_position or args.to_gtid) and args.remote:
        raise BackupError(
            "--from takes one backup: restore it, or fetch it first "
            "(restore ID --from NAME), then restore --to from the local tree"
        )
    if args.to or args.to_position or args.to_gtid:
        plan = pitr.plan(
            settings, common.tree(), only, args.to, args.to_position, args.to_gtid, args.id
        )
        print(pitr.describe(plan), file=sys.stdout if args.dry_run else sys.stderr)
        if args.dry_run:
            return 0
        args.id, only = plan["backup_id"], plan["only"]
    elif not args.id:
        raise BackupError("give a backup id, or --to/--to-position/--to-gtid")
    if args.remote:
        manifest = catalog.manifest(common.remote(args.remote), args.id)
    else:
        manifest = manifests.read(common.tree(), args.id)
    artifacts = selected_artifacts(manifest, only)
    for warning in manifest.get("warnings") or []:  # an emptied volume, say: on purpose?
        print(f"WARNING: backup {manifest['id']} recorded: {warning}", file=sys.stderr)
    if not args.yes and not confirm(manifest, artifacts, settings.stop_containers):
        print("not confirmed; nothing was done", file=sys.stderr)
        return 1
    client = common.broker(settings)
    run_id = workflows.reserve_id(client, prefix="restore-")
    restore_run = workflows.new_restore_run(
        run_id, args.id, kinds_of(artifacts), only, plan, from_remote=args.remote
    )
    queues = workflows.queues(restore_run, settings)
    common.require_worker(client, queues)
    workflows.signature(restore_run, settings).apply_async()
    if args.detach:
        print(run_id)
        return 0
    print(f"restore run {run_id} of backup {args.id} enqueued", file=sys.stderr)
    state = common.follow(client, run_id, queues)
    if state.get("status") != "succeeded":
        print(
            f"restore {run_id} FAILED in {state.get('step')}: {state.get('error')}", file=sys.stderr
        )
        if state.get("recovery"):
            print(state["recovery"], file=sys.stderr)
        print(run_id)
        return 1
    print(f"restore of {args.id} done and verified", file=sys.stderr)
    print(run_id)
    return 0
