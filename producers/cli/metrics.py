"""`xiehe-backup metrics [--port 9468] [--bind 127.0.0.1] [--once]`: Prometheus endpoint.

Every scrape reads the backup tree afresh (workers/ops/metrics.py); nothing is cached,
so the endpoint is right even while backups run in other processes.
"""

from __future__ import annotations

import argparse
import sys
import threading

from prometheus_client import start_http_server

from producers.cli import common
from workers.ops import metrics


def register(sub) -> None:
    p = sub.add_parser("metrics", help="serve Prometheus metrics (last success, size, RPO...)")
    p.add_argument("--port", type=int, default=9468)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = common.settings()
    tree = common.tree()
    if args.once:
        print(metrics.text(tree, settings), end="")
        return 0
    start_http_server(args.port, addr=args.bind, registry=metrics.registry(tree, settings))
    print(f"serving metrics on http://{args.bind}:{args.port}/metrics", file=sys.stderr, flush=True)
    threading.Event().wait()  # the server thread serves until the process is stopped
    return 0
