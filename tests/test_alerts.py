"""Notifications through apprise reach a local webhook (json://) exactly once, survive a
flaky receiver, go to every configured URL, never fail the caller nor log a URL; the
scheduled health task is the dead man's switch for a stale last good backup."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from tests.conftest import base_env
from tests.support.fake_backups import make_backup
from tests.support.servers import free_port
from tests.support.webhook import Receiver
from workers import config
from workers.ops import alerts, health
from workers.store.layout import Tree


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()


@pytest.fixture
def clean_env(monkeypatch):
    for name in (
        "XIEHE_NOTIFY_URLS",
        "XIEHE_NOTIFY_URLS_FILE",
        "XIEHE_NOTIFY_URL",
        "XIEHE_NOTIFY_URL_FILE",
        "XIEHE_NOTIFY_ON_SUCCESS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def failed_run() -> dict:
    return {
        "id": "20240601_020000",
        "type": "backup",
        "kinds": ["mysql"],
        "reason": "scheduled",
        "status": "failed",
        "failed_step": "dump_mysql",
        "error": "mysql: access denied",
        "steps": {},
    }


def test_a_failing_backup_sends_exactly_one_notification(receivers, tmp_path, clean_env):
    hook = receivers()
    clean_env.setenv("XIEHE_NOTIFY_URLS", hook.url)
    ctx = SimpleNamespace(tree=Tree(tmp_path))
    assert alerts.notify_failure(failed_run(), ctx) == {"notified": True}
    [event] = hook.bodies
    assert event["type"] == "failure"
    assert "backup.failed 20240601_020000" in event["title"]
    assert "failed_step: dump_mysql" in event["message"]
    assert "error: mysql: access denied" in event["message"]


def test_success_is_notified_only_when_configured(receivers, tmp_path, clean_env):
    hook = receivers()
    clean_env.setenv("XIEHE_NOTIFY_URL", hook.url)  # the alias of XIEHE_NOTIFY_URLS
    ctx = SimpleNamespace(tree=Tree(tmp_path))
    run = {**failed_run(), "status": "succeeded", "error": None, "failed_step": None}
    assert alerts.notify_result(run, ctx) == {"notified": False}
    clean_env.setenv("XIEHE_NOTIFY_ON_SUCCESS", "true")
    assert alerts.notify_result(run, ctx) == {"notified": True}
    [event] = hook.bodies
    assert event["type"] == "success" and "backup.succeeded" in event["title"]


def test_a_backup_with_warnings_is_notified_whatever_the_success_setting(
    receivers, tmp_path, clean_env
):
    hook = receivers()
    clean_env.setenv("XIEHE_NOTIFY_URLS", hook.url)  # XIEHE_NOTIFY_ON_SUCCESS unset: off
    ctx = SimpleNamespace(tree=Tree(tmp_path))
    warning = "volume uploads holds no files; it held 383 (209897066 bytes) in backup b1"
    publish = {"result": {"size_bytes": 10, "warnings": [warning]}}
    run = {**failed_run(), "status": "succeeded", "error": None, "failed_step": None}
    assert alerts.notify_result({**run, "steps": {"publish": publish}}, ctx) == {"notified": True}
    [event] = hook.bodies
    assert event["type"] == "warning" and "backup.warning" in event["title"]
    assert warning in event["message"]


def test_every_configured_url_gets_it_once(receivers, tmp_path, clean_env):
    """A list from a file (Docker secret) plus the alias; a failing URL is retried alone."""
    first, second, alias = receivers(), receivers(), receivers()
    second.fail_first = 1
    urls = tmp_path / "urls"
    urls.write_text(f"{first.url},\n{second.url}\n")
    clean_env.setenv("XIEHE_NOTIFY_URLS_FILE", str(urls))
    clean_env.setenv("XIEHE_NOTIFY_URL", alias.url)
    assert alerts.notify_urls() == [first.url, second.url, alias.url]
    assert alerts.notify({"event": "restore.failed", "status": "failed"}, backoff=0.01)
    assert [len(r.bodies) for r in (first, second, alias)] == [1, 1, 1]


def test_a_flaky_receiver_gets_it_on_a_retry(receivers):
    hook = receivers()
    hook.fail_first = 2
    assert alerts.notify({"event": "drill.failed", "status": "failed"}, [hook.url], 0.01)
    assert len(hook.bodies) == 1


def test_an_unreachable_receiver_never_fails_the_caller_nor_leaks_the_url(caplog):
    port = free_port()
    urls = [f"json://127.0.0.1:{port}/hook/T0KEN", f"json://ops:S3CRET@127.0.0.1:{port}/"]
    with caplog.at_level(logging.DEBUG):
        assert alerts.notify({"event": "backup.failed", "status": "failed"}, urls, 0.01) is False
    assert "backup.failed" in caplog.text
    assert "notification #1 (JSON) not delivered (attempt 3/3)" in caplog.text
    assert "notification #2 (JSON) not delivered (attempt 3/3)" in caplog.text
    for secret in ("T0KEN", str(port), "S3CRET"):
        assert secret not in caplog.text


def test_no_url_configured_is_logged_only(clean_env, caplog):
    with caplog.at_level(logging.INFO, logger="xiehe.alerts"):
        assert alerts.notify({"event": "backup.failed", "status": "failed"}) is False
    assert "backup.failed" in caplog.text


def test_dead_mans_switch_names_the_stale_backup(receivers, broker, tmp_path, clean_env):
    """The scheduled health task with the last good backup 30 h old (limit 26 h)."""
    hook = receivers()
    for key, value in base_env(broker.url, tmp_path / "backups").items():
        if key.startswith("XIEHE_"):
            clean_env.setenv(key, value)
    clean_env.setenv("XIEHE_NOTIFY_URLS", hook.url)
    tree = Tree(tmp_path / "backups")
    tree.ensure()
    make_backup(tree, datetime.now(UTC) - timedelta(hours=30), b"rdb")
    result = health.scheduled(config.load())
    assert not result["ok"] and "last good backup" in result["failing"]
    [event] = hook.bodies
    assert "health.failed" in event["title"]
    assert "h old (limit 26 h)" in event["message"]
