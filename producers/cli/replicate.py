"""`xiehe-backup replicate [--remote NAME]`: send now every kept, verified backup still
missing on the off-site remotes (after an outage), instead of waiting for the next backup.
Runs here, where the backup tree is (the worker's container), under each remote's lock."""

from __future__ import annotations

import argparse
from dataclasses import replace

from producers.cli import common
from workers.errors import BackupError
from workers.offsite import settings as offsite_settings
from workers.offsite.replicate import REPLICATED, replicate_pending
from workers.ops import settings as ops_settings


def register(sub) -> None:
    p = sub.add_parser("replicate", help="send the backups still missing off-site, now")
    p.add_argument("--remote", metavar="NAME", help="only off-site remote NAME")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings, offsite = common.settings(), offsite_settings.load()
    if args.remote:
        offsite = replace(offsite, remotes=(offsite.remote(args.remote),))
    if not offsite.remotes:
        raise BackupError("no off-site remote is configured (XIEHE_OFFSITE)")
    policy = ops_settings.load().policy
    outcomes = replicate_pending(settings, offsite, common.broker(settings), "", policy)
    for name, outcome in outcomes.items():
        sent = ", ".join(s["id"] for s in outcome.get("sent", [])) or "nothing missing"
        error = f": {outcome['error']}" if outcome.get("error") else ""
        print(f"{name}: {outcome['status']} (sent {sent}){error}")
    return 0 if all(o["status"] == REPLICATED for o in outcomes.values()) else 1
