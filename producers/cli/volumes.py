"""`xiehe-backup volumes [--json]`: the stack's volumes, size, mount point, containers."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.ops.space import volume_usage
from workers.targets import docker_engine


def register(sub) -> None:
    p = sub.add_parser("volumes", help="list the configured Docker volumes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = common.settings()
    if not settings.volumes:
        print("no volumes configured (XIEHE_VOLUMES)")
        return 0
    rows = volume_usage(docker_engine.client(settings.docker_url), settings.volumes)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(f"{'VOLUME':32} {'SIZE':>10}  {'MOUNTPOINT':50} CONTAINERS")
        for v in rows:
            size = common.human_bytes(v["size_bytes"]) if v["size_bytes"] is not None else "?"
            where = v["mountpoint"] if v["exists"] else "MISSING"
            print(f"{v['name']:32} {size:>10}  {where:50} {', '.join(v['containers']) or '-'}")
    return 0 if all(v["exists"] for v in rows) else 1
