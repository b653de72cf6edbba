"""`xiehe-backup df [--json]`: the backup tree's usage by kind and the volumes' usage."""

from __future__ import annotations

import argparse
import json
import sys

from producers.cli import common
from workers.ops import settings as ops_settings
from workers.ops.space import report


def register(sub) -> None:
    p = sub.add_parser("df", help="disk usage of the backups and of the volumes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = report(common.settings(), ops_settings.load().df_warn_percent)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    hb = common.human_bytes
    d = result["disk"]
    print(
        f"backup disk {result['backup_dir']}: {hb(d['used'])} used of {hb(d['total'])} "
        f"({d['percent']}%), {hb(d['free'])} free"
    )
    for kind, size in result["tree"].items():
        print(f"  {kind:10} {hb(size):>10}")
    if "volumes" in result:
        print(f"{'VOLUME':32} {'SIZE':>10}  MOUNTPOINT")
        for v in result["volumes"]:
            size = hb(v["size_bytes"]) if v["size_bytes"] is not None else "?"
            where = v["mountpoint"] if v["exists"] else "MISSING"
            print(f"{v['name']:32} {size:>10}  {where}")
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
