"""Prometheus metrics from the backup tree: the textfile, and the `xiehe-backup metrics`
endpoint scraped over real HTTP, which reads the tree afresh on every scrape."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import base_env
from tests.support.fake_backups import make_backup
from tests.support.servers import free_port
from workers.ops import metrics
from workers.store import journal
from workers.store import manifest as manifests
from workers.store.layout import Tree

GOOD_AT = datetime(2024, 6, 2, 2, tzinfo=UTC)


def samples(text: str) -> dict[tuple, float]:
    """{(name, (label, value)...): value} of an exposition."""
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def history(tree: Tree) -> None:
    """A verified backup with a passed drill, a damaged one, a failed run and a failed drill."""
    tree.ensure()
    good = make_backup(tree, GOOD_AT, b"rdb")
    bad = make_backup(tree, GOOD_AT + timedelta(days=1), b"rdb")
    manifests.update(tree, bad, status="failed-verification")
    manifests.update(tree, good, steps={"dump_mysql": 12.5, "publish": 0.5})
    manifests.update(
        tree,
        good,
        drills=[
            {"at": "2024-06-03T00:00:00+00:00", "ok": False, "rto_seconds": 9.0},
            {"at": "2024-06-04T00:00:00+00:00", "ok": True, "rto_seconds": 42.5},
        ],
    )
    journal.save(tree, {"id": "20240605_020000", "type": "backup", "status": "failed"})
    journal.save(tree, {"id": "20240605_030000", "type": "restore", "status": "succeeded"})


def test_textfile(tmp_path):
    tree = Tree(tmp_path)
    history(tree)
    path = metrics.write(tree)
    got = samples(open(path).read())
    size = manifests.read(tree, "20240602_020000")["size_bytes"]
    for kind in ("mysql", "redis", "volumes"):
        key = ("xiehe_backup_last_success_timestamp_seconds", ("kind", kind))
        assert got[key] == GOOD_AT.timestamp()
    assert got[("xiehe_backup_last_size_bytes",)] == size
    assert got[("xiehe_backup_last_duration_seconds",)] == 13.0
    assert got[("xiehe_backup_verify_failures",)] == 1
    assert got[("xiehe_backup_backups",)] == 2
    assert got[("xiehe_backup_drill_rto_seconds",)] == 42.5
    assert got[("xiehe_backup_drill_last_ok",)] == 1
    assert got[("xiehe_backup_failures_total", ("type", "backup"))] == 1
    assert got[("xiehe_backup_failures_total", ("type", "restore"))] == 0
    assert got[("xiehe_backup_failures_total", ("type", "drill"))] == 1
    # scrape-time figures only come from the live endpoint
    assert ("xiehe_backup_last_good_age_seconds",) not in got


def scrape(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def endpoint(tmp_path):
    """`xiehe-backup metrics` on a free port; the broker is a closed port (not needed)."""
    env = base_env(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "backups")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.cli.main", "metrics", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield Tree(tmp_path / "backups"), f"http://127.0.0.1:{port}/metrics"
    proc.terminate()
    proc.wait(30)


def test_endpoint_reads_the_tree_on_every_scrape(endpoint):
    tree, url = endpoint
    history(tree)
    got = samples(scrape(url, time.monotonic() + 30))
    assert got[("xiehe_backup_verify_failures",)] == 1
    assert got[("xiehe_backup_drill_rto_seconds",)] == 42.5
    age = time.time() - GOOD_AT.timestamp()
    assert abs(got[("xiehe_backup_last_good_age_seconds",)] - age) < 60
    assert ("xiehe_backup_rpo_seconds",) not in got  # no binlog archiver ran
    assert got[("xiehe_backup_broker_up",)] == 0  # the fixture's broker is a closed port
    assert not [key for key in got if key[0] == "xiehe_backup_workers"]

    newer = datetime.now(UTC).replace(microsecond=0)
    make_backup(tree, newer, b"rdb")
    got = samples(scrape(url, time.monotonic() + 5))
    key = ("xiehe_backup_last_success_timestamp_seconds", ("kind", "redis"))
    assert got[key] == newer.timestamp()
    assert got[("xiehe_backup_backups",)] == 3
    assert got[("xiehe_backup_last_good_age_seconds",)] < 60


def test_endpoint_reports_the_binlog_archives_rpo(endpoint):
    from workers.targets import binlog

    if not hasattr(binlog, "rpo_seconds"):
        pytest.skip("workers/targets/binlog.py has no rpo_seconds(settings) yet")
    tree, url = endpoint
    tree.ensure()
    state = tree.root / "binlog" / binlog.STATE_FILE
    state.parent.mkdir(mode=0o700)
    state.write_text(json.dumps({"complete_until": time.time() - 120}))
    got = samples(scrape(url, time.monotonic() + 30))
    assert 119 <= got[("xiehe_backup_rpo_seconds",)] < 180


def test_offsite_copies_from_the_local_records(tmp_path):
    tree = Tree(tmp_path)
    tree.ensure()
    sent = make_backup(tree, GOOD_AT, b"rdb")
    manifests.update(tree, sent, offsite={"dr": {"status": "replicated"}})
    behind = make_backup(tree, GOOD_AT + timedelta(days=1), b"rdb")
    manifests.update(tree, behind, offsite={"dr": {"status": "local-only", "error": "refused"}})
    got = samples(metrics.text(tree))
    finished = datetime.fromisoformat(manifests.read(tree, sent)["finished_at"]).timestamp()
    assert got[("xiehe_backup_offsite_last_success_timestamp_seconds", ("remote", "dr"))] == (
        finished
    )
    assert got[("xiehe_backup_offsite_local_only", ("remote", "dr"))] == 1


def test_endpoint_counts_the_live_workers_of_each_queue(broker, worker_factory, tmp_path):
    """The Docker host's queue has no worker: its gauge is 0 (the alert to raise), the
    shared queue's is 1; once that worker stops, 0 at once."""
    env = base_env(broker.url, tmp_path / "backups")
    env.update(XIEHE_QUEUE="xt-metrics-shared", XIEHE_DOCKER_QUEUE="xt-metrics-docker")
    worker = worker_factory(env, queues="xt-metrics-shared")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.cli.main", "metrics", "--port", str(port)], env=env
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        got = samples(scrape(url, time.monotonic() + 30))
        assert got[("xiehe_backup_broker_up",)] == 1
        assert got[("xiehe_backup_workers", ("queue", "xt-metrics-shared"))] == 1
        assert got[("xiehe_backup_workers", ("queue", "xt-metrics-docker"))] == 0
        worker.stop()
        got = samples(scrape(url, time.monotonic() + 5))
        assert got[("xiehe_backup_workers", ("queue", "xt-metrics-shared"))] == 0
    finally:
        proc.terminate()
        proc.wait(30)
