"""backup_before_migration from a real process, against a real worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import base_env
from tests.support.servers import free_port

GATE = """
import json, sys
from producers.client import backup_before_migration, MigrationGateError
try:
    print(json.dumps({"id": backup_before_migration(sys.argv[1], timeout=float(sys.argv[2]))}))
except MigrationGateError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def gate(env: dict[str, str], name: str, timeout: float = 120) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", GATE, name, str(timeout)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(tmp_path, redis_server):
    broker, target = redis_server(), redis_server()
    target.client().set("image:1", "x" * 4096)
    env = base_env(broker.url, tmp_path / "backups")
    env["XIEHE_REDIS_URL"] = target.url
    return env


def test_returns_the_verified_backup_id(env, worker_factory, tmp_path):
    worker_factory(env)
    result = gate(env, "0042_add_index")
    manifest = json.loads((tmp_path / "backups" / f"manifest_{result['id']}.json").read_text())
    assert manifest["status"] == "verified"
    assert manifest["reason"] == "pre-migration 0042_add_index"


def test_raises_when_mysql_is_unreachable(env, worker_factory):
    env = {
        **env,
        "XIEHE_MYSQL_HOST": "127.0.0.1",
        "XIEHE_MYSQL_PORT": str(free_port()),
        "XIEHE_MYSQL_USER": "root",
    }
    worker_factory(env)
    result = gate(env, "0043_split")
    assert result["error"] == "BackupFailed"
    assert "preflight" in result["message"] and "mysql" in result["message"].lower()


def test_raises_on_timeout_and_without_a_worker(env, worker_factory):
    result = gate(env, "0044_nobody")
    assert result["error"] == "BackupFailed" and "no xiehe-backup worker" in result["message"]
    worker_factory(env)
    result = gate(env, "0045_slow", timeout=0.5)
    assert result["error"] == "BackupTimeout" and "did not finish within" in result["message"]


def test_a_hung_worker_fails_the_gate_long_before_its_timeout(env, worker_factory):
    """The only worker freezes (SIGSTOP) just after the gate's check found it: the run
    makes no progress and the worker stops announcing itself, so after the silence the
    gate says no worker takes the run, instead of holding the migration until its timeout."""
    worker = worker_factory(env)
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        result = gate(env, "0046_hung", timeout=90)
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    assert result["error"] == "BackupFailed", result
    assert "no xiehe-backup worker is running on queue" in result["message"]
    assert "the run stays queued" in result["message"]  # found by the wait, not at the start
    assert time.monotonic() - started < 80  # the gate's own timeout would give up at 90 s


def test_seed_scripts_wrap_the_cli(env, worker_factory, tmp_path):
    worker_factory(env)
    scripts = Path(__file__).resolve().parents[1] / "ops" / "scripts"
    out = subprocess.run(
        ["bash", str(scripts / "backup_database.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    backup_id = out.stdout.strip()
    manifest = json.loads((tmp_path / "backups" / f"manifest_{backup_id}.json").read_text())
    assert manifest["status"] == "verified" and manifest["reason"] == "cron"
    bad = subprocess.run(
        ["bash", str(scripts / "restore_database.sh"), "yesterday"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "usage" in bad.stderr
