"""Entry point: discovers the verb modules of this package and dispatches to one."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

import producers.cli as package
from workers.config import ConfigError
from workers.errors import BackupError

NOT_VERBS = {"main", "common"}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Every verb's parser, or only `verb`'s when it names one: a command imports its own
    module alone (the others pull in Docker, binlog and drill code it does not need)."""
    parser = argparse.ArgumentParser(
        prog="xiehe-backup",
        description="Backup, restore and disaster recovery for XieHe (MySQL, Redis, volumes).",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    modules = [m for m in modules if m not in NOT_VERBS]
    wanted = (verb or "").replace("-", "_")
    for module in [wanted] if wanted in modules else modules:
        importlib.import_module(f"producers.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # the verb's modules read settings as they load (the Celery app's among them)
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"xiehe-backup: configuration error: {exc}", file=sys.stderr)
        return 2
    except BackupError as exc:
        print(f"xiehe-backup: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xiehe-backup: interrupted; the run goes on in the workers", file=sys.stderr)
        return 130


def run() -> None:
    """The console script: main(), then out without tearing the interpreter down.  Its
    modules, threads and pools hold nothing left to save once the verb has returned, and
    the teardown cost every command 0.1-0.2 s here."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
