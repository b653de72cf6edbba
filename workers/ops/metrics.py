"""Prometheus metrics, recomputed from the tree (manifests and run journals are the record),
so they always agree with what `list` shows.

One collector serves both ways out: the textfile backups/.metrics/xiehe_backup.prom
(node_exporter's textfile collector), rewritten after each run, and the live endpoint of
`xiehe-backup metrics`, which also reports what only makes sense at scrape time: the age
of the last good backup and the binlog archive's RPO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from workers import liveness
from workers.config import Settings
from workers.store import atomic, journal
from workers.store import manifest as manifests
from workers.store.layout import Tree

FILE = "xiehe_backup.prom"
PREFIX = "xiehe_backup_"
KINDS = ("mysql", "redis", "volumes")
log = logging.getLogger("xiehe.metrics")


def _ts(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _newest_good(all_manifests: list[dict]) -> dict | None:
    good = [m for m in all_manifests if m.get("status") == "verified"]
    return max(good, key=lambda m: _ts(m.get("finished_at")), default=None)


def _gauge(name: str, help_text: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, help_text, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _backup_families(all_manifests: list[dict]) -> Iterator:
    last = GaugeMetricFamily(
        PREFIX + "last_success_timestamp_seconds",
        "finish time of the newest verified backup holding this kind",
        labels=["kind"],
    )
    for kind in KINDS:
        good = _newest_good([m for m in all_manifests if kind in m.get("kinds", [])])
        if good:
            last.add_metric([kind], _ts(good.get("finished_at")))
    yield last
    newest = _newest_good(all_manifests)
    if newest:
        duration = sum(v or 0 for v in newest.get("steps", {}).values())
        yield _gauge("last_size_bytes", "size of the newest verified backup", newest["size_bytes"])
        yield _gauge("last_duration_seconds", "duration of the newest verified backup", duration)
    failed = sum(1 for m in all_manifests if m.get("status") == "failed-verification")
    yield _gauge("verify_failures", "backups that failed verification", failed)
    yield _gauge("backups", "published backups", len(all_manifests))


def _drill_families(all_manifests: list[dict]) -> Iterator:
    drills = [d for m in all_manifests for d in m.get("drills", [])]
    if not drills:
        return
    last = max(drills, key=lambda d: _ts(d.get("at")))
    yield _gauge(
        "drill_rto_seconds", "time the last restore drill took", last.get("rto_seconds") or 0
    )
    yield _gauge("drill_last_ok", "1 if the last restore drill passed", 1 if last.get("ok") else 0)


def _offsite_families(all_manifests: list[dict]) -> Iterator:
    """From the local manifests' off-site records: no remote is contacted on a scrape."""
    records = [(name, m, r) for m in all_manifests for name, r in (m.get("offsite") or {}).items()]
    if not records:
        return
    last = GaugeMetricFamily(
        PREFIX + "offsite_last_success_timestamp_seconds",
        "finish time of the newest backup copied to this remote",
        labels=["remote"],
    )
    local_only = GaugeMetricFamily(
        PREFIX + "offsite_local_only", "verified backups not yet on this remote", labels=["remote"]
    )
    for name in sorted({n for n, _, _ in records}):
        mine = [(m, r) for n, m, r in records if n == name]
        sent = [m for m, r in mine if r.get("status") == "replicated"]
        last.add_metric([name], max((_ts(m.get("finished_at")) for m in sent), default=0.0))
        missing = [m for m, r in mine if r.get("status") != "replicated"]
        local_only.add_metric([name], sum(1 for m in missing if m.get("status") == "verified"))
    yield last
    yield local_only


def _failures(tree: Tree, all_manifests: list[dict]) -> CounterMetricFamily:
    counts = {"backup": 0, "restore": 0, "drill": 0}
    for run in journal.all_runs(tree):
        if run.get("status") == "failed":
            counts[run.get("type", "backup")] = counts.get(run.get("type", "backup"), 0) + 1
    counts["drill"] = sum(1 for m in all_manifests for d in m.get("drills", []) if not d.get("ok"))
    family = CounterMetricFamily(
        PREFIX + "failures", "failed runs (journals kept) and failed drills", labels=["type"]
    )
    for kind, n in counts.items():
        family.add_metric([kind], n)
    return family


def binlog_rpo(settings: Settings) -> float | None:
    """The binlog archive's RPO, when that module (and an archiver) exists."""
    try:
        from workers.targets.binlog import rpo_seconds
    except ImportError:
        return None
    try:
        return rpo_seconds(settings)
    except Exception as exc:  # noqa: BLE001 - a scrape must not fail for one figure
        log.warning("RPO not measured: %s", exc)
        return None


def _worker_families(settings: Settings) -> Iterator:
    """Whether the broker answers, and the live workers on each queue a run needs (an
    alert on 0 catches a Docker host whose worker is down before a backup waits on it)."""
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        heard = liveness.consumers(client, settings.queues())
    except redis.RedisError as exc:
        log.warning("workers not counted: broker unreachable: %s", exc)
        yield _gauge("broker_up", "whether the queue's Redis answered this scrape", 0)
        return
    finally:
        client.close()
    yield _gauge("broker_up", "whether the queue's Redis answered this scrape", 1)
    workers = GaugeMetricFamily(
        PREFIX + "workers",
        f"workers consuming this queue, heard within {liveness.STALE} s",
        labels=["queue"],
    )
    for queue, names in heard.items():
        workers.add_metric([queue], len(names))
    yield workers


class TreeCollector:
    """Reads the tree on each collect(); `settings` adds the scrape-time figures."""

    def __init__(self, tree: Tree, settings: Settings | None = None) -> None:
        self.tree, self.settings = tree, settings

    def collect(self) -> Iterator:
        all_manifests = manifests.read_all(self.tree)
        yield from _backup_families(all_manifests)
        yield from _drill_families(all_manifests)
        yield from _offsite_families(all_manifests)
        yield _failures(self.tree, all_manifests)
        if self.settings is None:
            return
        newest = _newest_good(all_manifests)
        if newest:
            age = time.time() - _ts(newest.get("finished_at"))
            yield _gauge("last_good_age_seconds", "age of the newest verified backup", age)
        rpo = binlog_rpo(self.settings)
        if rpo is not None:
            yield _gauge("rpo_seconds", "seconds of commits not yet in the binlog archive", rpo)
        yield from _worker_families(self.settings)


def registry(tree: Tree, settings: Settings | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TreeCollector(tree, settings))
    return reg


def text(tree: Tree, settings: Settings | None = None) -> str:
    return generate_latest(registry(tree, settings)).decode()


def write(tree: Tree) -> str:
    """Write the textfile (atomically: a scraper never reads half of it); return its path."""
    directory = tree.root / ".metrics"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / FILE
    atomic.write_text(path, text(tree))
    return str(path)
