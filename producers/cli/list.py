"""`xiehe-backup list [--json] [--all] [--remote NAME]`: complete backups, newest last;
with --remote, those the off-site remote holds (its own listing)."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.offsite import catalog
from workers.store import journal
from workers.store import manifest as manifests


def register(sub) -> None:
    p = sub.add_parser("list", help="list backups")
    p.add_argument("--json", action="store_true", help="one JSON array")
    p.add_argument("--all", action="store_true", help="also failed and unfinished runs")
    p.add_argument("--remote", metavar="NAME", help="list what off-site remote NAME holds")
    p.set_defaults(handler=run)


def row(m: dict) -> dict:
    return {
        "id": m["id"],
        "status": m["status"],
        "created_at": m["created_at"],
        "kinds": m["kinds"],
        "size_bytes": m["size_bytes"],
        "reason": m.get("reason", ""),
        "pinned": bool(m.get("pinned")),
        "offsite": {name: r.get("status") for name, r in (m.get("offsite") or {}).items()},
        "warnings": m.get("warnings") or [],
    }


def summaries(tree, include_runs: bool) -> list[dict]:
    rows = [row(m) for m in manifests.read_all(tree)]
    if include_runs:
        published = {r["id"] for r in rows}
        rows += [
            {
                "id": r["id"],
                "status": r.get("status", "?"),
                "created_at": r.get("created_at"),
                "kinds": r.get("kinds", []),
                "size_bytes": 0,
                "reason": r.get("reason", ""),
                "error": r.get("error"),
            }
            for r in journal.all_runs(tree)
            if r.get("type") == "backup" and r["id"] not in published
        ]
    return sorted(rows, key=lambda r: r["id"])


def run(args: argparse.Namespace) -> int:
    if args.remote:
        rows = [row(m) for m in catalog.manifests(common.remote(args.remote))]
    else:
        rows = summaries(common.tree(), args.all)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no backups yet")
        return 0
    print(f"{'ID':16} {'STATUS':20} {'SIZE':>10}  {'KINDS':22} {'OFF-SITE':16} REASON")
    for r in rows:
        offsite = ",".join(f"{k}:{v}" for k, v in sorted(r.get("offsite", {}).items())) or "-"
        print(
            f"{r['id']:16} {r['status']:20} {common.human_bytes(r['size_bytes']):>10}  "
            f"{','.join(r['kinds']):22} {offsite:16} "
            f"{r['reason']}{'  ' + r['error'] if r.get('error') else ''}"
            + "".join(f"  WARNING: {w}" for w in r.get("warnings", []))
        )
    return 0
