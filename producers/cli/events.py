"""`xiehe-backup events`: consume the backend's event stream until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from producers import events
from producers.cli import common


def register(sub) -> None:
    p = sub.add_parser(
        "events",
        help="consume backend events (migration.pending -> backup, reply on completion)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = common.settings()
    consumer = events.Consumer(events.load_config(os.environ, settings), settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    consumer.run(stop)  # pending entries stay pending: the next consumer takes them over
    return 0
