"""`xiehe-backup doctor [--json]`: check everything a backup needs; non-zero if any fails."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.ops.health import run_checks


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check targets, Docker, disk, broker, worker, beat")
    p.add_argument("--json", action="store_true", help="the checks as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    checks = run_checks(common.settings())
    if args.json:
        print(json.dumps(checks, ensure_ascii=False))
    else:
        for c in checks:
            mark = "FAIL" if not c["ok"] else ("WARN" if c.get("warn") else " ok ")
            print(f"[{mark}] {c['name']:24} {c['detail']}")
            if c["hint"]:
                print(f"       fix: {c['hint']}")
    failing = [c["name"] for c in checks if not c["ok"]]
    if failing and not args.json:
        print(f"{len(failing)} check(s) failed: {', '.join(failing)}")
    return 1 if failing else 0
