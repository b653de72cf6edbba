"""docs/runbook.md: every `bash safe` block runs with exit code 0 against a real worker,
beat and the `stack` fixture; every xiehe-backup command of any block parses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producers.cli.main import build_parser
from tests.support.cli import cli
from workers.ops.health import beat_lock_key

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"
BLOCK = re.compile(r"^```bash( safe)?\n(.*?)^```", re.M | re.S)


def blocks(safe_only: bool) -> list[str]:
    return [body for safe, body in BLOCK.findall(RUNBOOK.read_text()) if safe or not safe_only]


def test_the_runbook_has_both_languages_and_the_seed_plans_sections():
    text = RUNBOOK.read_text()
    for heading in ("日常备份", "恢复", "部分恢复", "灾难恢复", "Volume 管理", "故障排除"):
        assert f" {heading}" in text, heading
    for heading in ("Daily backups", "Restore", "Partial restore", "Disaster recovery"):
        assert heading in text, heading
    assert "docker compose down -v" in text and "age -d -i key.txt" in text
    safe = "\n".join(blocks(safe_only=True))
    for verb in ("list", "show", "verify", "df", "volumes", "doctor", "prune --dry-run"):
        assert f"xiehe-backup {verb}" in safe, verb
    assert "xiehe-backup backup --only redis" in safe and "xiehe-backup status" in safe


def cli_invocations() -> list[list[str]]:
    """The arguments of every `xiehe-backup ...` in every block (up to a pipe or `&&`)."""
    found = []
    for body in blocks(safe_only=False):
        for line in body.splitlines():
            if line.lstrip().startswith(("#", "alias ")):
                continue
            for match in re.finditer(r"xiehe-backup (.+?)(?:\s*(?:\||&&|\)|$))", line):
                found.append(shlex.split(match.group(1).replace('"$ID"', "20240926_143000")))
    return found


@pytest.mark.parametrize("args", cli_invocations(), ids=lambda a: " ".join(a))
def test_every_command_of_the_runbook_parses(args):
    parsed = build_parser().parse_args(args)
    assert parsed.handler


@pytest.fixture
def beat(stack, tmp_path):
    """A real `celery beat` (redbeat), so doctor finds every service alive; its jobs are
    off, so no scheduled backup races the runbook's own."""
    _, env = stack
    jobs = ("BACKUP", "PRUNE", "VERIFY", "DRILL", "HEALTH")
    env = {**env, **{f"XIEHE_SCHEDULE_{job}": "off" for job in jobs}}
    import redis

    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-S", "redbeat.RedBeatScheduler"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(env["XIEHE_BROKER_URL"])
    deadline = time.monotonic() + 60
    while not client.exists(beat_lock_key()):
        assert proc.poll() is None and time.monotonic() < deadline, "beat did not start"
        time.sleep(0.2)
    yield proc
    proc.terminate()
    proc.wait(30)


def test_the_safe_blocks_run(stack, worker_factory, beat, tmp_path):
    _, env = stack
    worker_factory(env)
    first = cli(env, "backup", "--reason", "history")  # the installation's last night
    assert first.returncode == 0, first.stderr
    # the `xiehe-backup` script installed next to this interpreter
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    safe = blocks(safe_only=True)
    assert len(safe) >= 5
    for body in safe:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{body}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
