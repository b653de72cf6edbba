"""Run the real `xiehe-backup` command as a user would."""

from __future__ import annotations

import subprocess
import sys


def cli(env: dict[str, str], *args: str, timeout: float = 600, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "producers.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def last_line(proc) -> str:
    return proc.stdout.strip().splitlines()[-1]
