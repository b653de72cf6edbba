"""Configuration: env and *_FILE secrets in, one clear line naming a bad variable out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.config import ConfigError, load


def test_defaults_and_kinds():
    s = load({})
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.backup_dir.name == "backups"
    assert s.kinds() == ()
    assert s.helper_image == "alpine:3.20"
    s = load(
        {
            "XIEHE_MYSQL_HOST": "db",
            "XIEHE_MYSQL_USER": "u",
            "XIEHE_VOLUMES": "a, b c,影像",
            "XIEHE_REDIS_URL": "redis://r:6379/0",
        }
    )
    assert s.kinds() == ("mysql", "redis", "volumes")
    assert s.volumes == ("a", "b c", "影像")
    assert s.mysql.system_db == "medical_system"


def test_secret_from_file_never_in_repr(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    s = load(
        {
            "XIEHE_MYSQL_HOST": "db",
            "XIEHE_MYSQL_USER": "u",
            "XIEHE_MYSQL_PASSWORD_FILE": str(secret),
        }
    )
    assert s.mysql.password == "s3cret-pw"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"XIEHE_MYSQL_HOST": "db", "XIEHE_MYSQL_USER": "u", "XIEHE_MYSQL_PORT": "x"},
            "XIEHE_MYSQL_PORT",
        ),
        ({"XIEHE_MYSQL_HOST": "db"}, "XIEHE_MYSQL_USER"),
        ({"XIEHE_BROKER_URL": "http://x"}, "XIEHE_BROKER_URL"),
        ({"XIEHE_REDIS_URL": "redis://h:port/0"}, "XIEHE_REDIS_URL"),
        ({"XIEHE_COMPRESSION": "lzma"}, "XIEHE_COMPRESSION"),
        (
            {
                "XIEHE_MYSQL_HOST": "db",
                "XIEHE_MYSQL_USER": "u",
                "XIEHE_MYSQL_PASSWORD_FILE": "/nonexistent/pw",
            },
            "XIEHE_MYSQL_PASSWORD_FILE",
        ),
        ({"XIEHE_AGE_RECIPIENTS": "not-a-key"}, "XIEHE_AGE_RECIPIENTS"),
    ],
)
def test_malformed_setting_names_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        load(env)


@pytest.mark.parametrize(
    "bad",
    [
        {"XIEHE_MYSQL_PORT": "abc"},
        # the Celery app's own settings, refused by config.load() before anything
        {"XIEHE_WORKER_MAX_MEMORY_MB": "1GB"},
        {"XIEHE_LONGEST_RUN_SECONDS": "6h"},
    ],
)
def test_cli_stops_before_enqueueing_on_bad_config(tmp_path, bad):
    env = {
        "PATH": "/usr/bin:/bin",
        "XIEHE_MYSQL_HOST": "db",
        "XIEHE_MYSQL_PORT": "3306",
        "XIEHE_MYSQL_USER": "u",
        "XIEHE_BACKUP_DIR": str(tmp_path),
        **bad,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "producers.cli.main", "backup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and next(iter(bad)) in lines[0], proc.stderr
