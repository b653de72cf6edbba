"""`xiehe-backup binlog-archiver`: stream the MySQL binary log into backups/binlog/ forever.

Run it as a supervised service (compose `restart: unless-stopped`, systemd): it resumes
from the newest archived file after its own restart or the server's, without a gap.
SIGTERM/SIGINT stop it cleanly.  `xiehe-backup status` shows the RPO it publishes.
"""

from __future__ import annotations

import argparse
import logging
import signal

from producers.cli import common
from workers.targets.binlog import Archiver


def register(sub) -> None:
    p = sub.add_parser(
        "binlog-archiver", help="archive the MySQL binlog continuously (point-in-time recovery)"
    )
    p.add_argument(
        "--lock-wait",
        type=float,
        default=30.0,
        help="seconds to wait for another archiver of this directory to exit",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    archiver = Archiver(common.settings())

    def stop(signum, _frame) -> None:
        logging.getLogger("xiehe.binlog").info("signal %d: stopping", signum)
        archiver.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    archiver.run(lock_wait=args.lock_wait)
    return 0
