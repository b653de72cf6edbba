"""`xiehe-backup drill [ID] [--json]`: restore a backup into scratch targets and compare."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.ops.drill import drill


def register(sub) -> None:
    p = sub.add_parser("drill", help="test-restore a backup into scratch targets (RTO)")
    p.add_argument("id", nargs="?", help="the backup (default: the newest verified one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = drill(common.settings(), args.id)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0 if result["ok"] else 1
    for name, detail in result["details"].items():
        print(f"{name:40} {'ok' if detail['ok'] else 'FAILED'}")
        for problem in [detail.get("error"), *detail.get("mismatches", [])]:
            if problem:
                print(f"    {problem}")
    verdict = "passed" if result["ok"] else "FAILED"
    print(f"drill of {result['id']} {verdict}; restore took {result['rto_seconds']} s (RTO)")
    return 0 if result["ok"] else 1
