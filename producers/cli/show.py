"""`xiehe-backup show ID [--json]`: one backup's manifest."""

from __future__ import annotations

import argparse
import json

from producers.cli import common
from workers.store import manifest as manifests


def register(sub) -> None:
    p = sub.add_parser("show", help="show one backup's manifest")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    tree = common.tree()
    manifest = manifests.read(tree, args.id)
    if args.json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        print(manifests.info_text(manifest), end="")
        steps = ", ".join(f"{k} {v}s" for k, v in manifest.get("steps", {}).items())
        print(f"steps: {steps}")
        for name, copy in sorted((manifest.get("offsite") or {}).items()):
            error = f": {copy['error']}" if copy.get("error") else ""
            where = f"{copy.get('status')} at {copy.get('at')} ({copy.get('url')})"
            print(f"off-site {name}: {where}{error}")
    return 0
