"""Notifications reach a local webhook exactly once, survive a flaky receiver, never fail
the caller nor log the URL; the metrics textfile reflects the tree."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from tests.support.fake_backups import make_backup
from tests.support.servers import free_port
from workers.ops import alerts, metrics
from workers.store import manifest as manifests
from workers.store.layout import Tree


@pytest.fixture
def receiver():
    """A local webhook: records every JSON body; fails the first `fail_first` requests."""
    state = {"bodies": [], "fail_first": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state["fail_first"] > 0:
                state["fail_first"] -= 1
                self.send_response(500)
            else:
                state["bodies"].append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/hook/T0KEN"
    yield state
    server.shutdown()


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


def test_a_failing_backup_sends_exactly_one_notification(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("XIEHE_NOTIFY_URL", receiver["url"])
    ctx = SimpleNamespace(tree=Tree(tmp_path))
    assert alerts.notify_failure(failed_run(), ctx) == {"notified": True}
    [event] = receiver["bodies"]
    assert event["event"] == "backup.failed" and event["failed_step"] == "dump_mysql"
    assert event["error"] == "mysql: access denied" and event["id"] == "20240601_020000"


def test_success_is_notified_only_when_configured(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("XIEHE_NOTIFY_URL", receiver["url"])
    ctx = SimpleNamespace(tree=Tree(tmp_path))
    run = {**failed_run(), "status": "succeeded", "error": None, "failed_step": None}
    assert alerts.notify_result(run, ctx) == {"notified": False}
    monkeypatch.setenv("XIEHE_NOTIFY_ON_SUCCESS", "true")
    assert alerts.notify_result(run, ctx) == {"notified": True}
    assert [e["event"] for e in receiver["bodies"]] == ["backup.succeeded"]


def test_a_flaky_receiver_gets_it_on_a_retry(receiver):
    receiver["fail_first"] = 2
    assert alerts.notify({"event": "drill.failed", "status": "failed"}, receiver["url"], 0.01)
    assert len(receiver["bodies"]) == 1


def test_an_unreachable_receiver_never_fails_the_caller_nor_leaks_the_url(caplog):
    url = f"http://127.0.0.1:{free_port()}/hook/T0KEN"
    with caplog.at_level(logging.INFO, logger="xiehe.alerts"):
        assert alerts.notify({"event": "backup.failed", "status": "failed"}, url, 0.01) is False
    assert "backup.failed" in caplog.text and "not delivered (attempt 3/3)" in caplog.text
    assert "T0KEN" not in caplog.text


def test_metrics_textfile(tmp_path):
    tree = Tree(tmp_path)
    tree.ensure()
    good = make_backup(tree, datetime(2024, 6, 2, 2, tzinfo=UTC), b"rdb")
    bad = make_backup(tree, datetime(2024, 6, 3, 2, tzinfo=UTC), b"rdb")
    manifests.update(tree, bad, status="failed-verification")
    manifests.update(
        tree, good, drills=[{"at": "2024-06-04T00:00:00+00:00", "ok": True, "rto_seconds": 42.5}]
    )
    path = metrics.write(tree)
    text = open(path).read()
    stamp = datetime(2024, 6, 2, 2, tzinfo=UTC).timestamp()
    assert f'xiehe_backup_last_success_timestamp_seconds{{kind="mysql"}} {stamp:g}' in text
    assert "xiehe_backup_verify_failures 1\n" in text
    assert "xiehe_backup_drill_rto_seconds 42.5\n" in text
    assert "xiehe_backup_drill_last_ok 1\n" in text
    assert text.count("# TYPE xiehe_backup_last_success_timestamp_seconds gauge") == 1
