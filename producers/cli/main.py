"""Entry point: discovers the verb modules of this package and dispatches to one."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import producers.cli as package
from workers.config import ConfigError
from workers.errors import BackupError

NOT_VERBS = {"main", "common"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xiehe-backup",
        description="Backup, restore and disaster recovery for XieHe (MySQL, Redis, volumes).",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if module not in NOT_VERBS:
            importlib.import_module(f"producers.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
