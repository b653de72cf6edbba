"""Prometheus metrics as a textfile (node_exporter's textfile collector, or serve/push it).

Recomputed from the tree each time (manifests and run journals are the record), so the
file is always consistent with what `list` shows: backups/.metrics/xiehe_backup.prom.
"""

from __future__ import annotations

from datetime import datetime

from workers.store import atomic, journal
from workers.store import manifest as manifests
from workers.store.layout import Tree

FILE = "xiehe_backup.prom"


def _ts(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _newest_good(all_manifests: list[dict]) -> dict | None:
    good = [m for m in all_manifests if m.get("status") == "verified"]
    return max(good, key=lambda m: _ts(m.get("finished_at")), default=None)


def collect(tree: Tree) -> list[tuple[str, str, dict, float]]:
    """(name, help, labels, value) rows."""
    all_manifests = manifests.read_all(tree)
    rows: list[tuple[str, str, dict, float]] = []
    for kind in ("mysql", "redis", "volumes"):
        good = _newest_good([m for m in all_manifests if kind in m.get("kinds", [])])
        if good:
            rows.append(
                (
                    "last_success_timestamp_seconds",
                    "finish time of the newest verified backup",
                    {"kind": kind},
                    _ts(good.get("finished_at")),
                )
            )
    newest = _newest_good(all_manifests)
    if newest:
        duration = sum(v or 0 for v in newest.get("steps", {}).values())
        rows.append(
            ("last_size_bytes", "size of the newest verified backup", {}, newest["size_bytes"])
        )
        rows.append(
            ("last_duration_seconds", "duration of the newest verified backup", {}, duration)
        )
    failed = sum(1 for m in all_manifests if m.get("status") == "failed-verification")
    rows.append(("verify_failures", "backups that failed verification", {}, failed))
    runs = [r for r in journal.all_runs(tree) if r.get("status") == "failed"]
    rows.append(("failed_runs", "runs that failed (journals kept)", {}, len(runs)))
    rows.append(("backups", "published backups", {}, len(all_manifests)))
    drills = [d for m in all_manifests for d in m.get("drills", [])]
    if drills:
        last = max(drills, key=lambda d: _ts(d.get("at")))
        rows.append(
            (
                "drill_rto_seconds",
                "time the last restore drill took",
                {},
                last.get("rto_seconds") or 0,
            )
        )
        rows.append(
            ("drill_last_ok", "1 if the last restore drill passed", {}, 1 if last.get("ok") else 0)
        )
    return rows


def render(rows: list[tuple[str, str, dict, float]]) -> str:
    lines, seen = [], set()
    for name, help_text, labels, value in rows:
        metric = f"xiehe_backup_{name}"
        if metric not in seen:
            seen.add(metric)
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        label = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{metric}{{{label}}} {value:g}" if label else f"{metric} {value:g}")
    return "\n".join(lines) + "\n"


def write(tree: Tree) -> str:
    """Write the textfile (atomically: a scraper never reads half of it); return its path."""
    directory = tree.root / ".metrics"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / FILE
    atomic.write_text(path, render(collect(tree)))
    return str(path)
