"""Free space on the backup disk and the size a backup is expected to take."""

from __future__ import annotations

import shutil
from pathlib import Path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def estimate(previous: dict | None, source_bytes: dict[str, int], ratio: float = 0.6) -> int:
    """Bytes the next backup will take: the last backup's size per kind when there is one
    (with 20% headroom for growth), else the sources' sizes times a compression ratio."""
    last_by_kind: dict[str, int] = {}
    for artifact in (previous or {}).get("artifacts", []):
        kind = "volumes" if artifact["kind"] == "volume" else artifact["kind"].split("-")[0]
        last_by_kind[kind] = last_by_kind.get(kind, 0) + artifact["size_bytes"]
    total = 0
    for kind, size in source_bytes.items():
        total += int(last_by_kind[kind] * 1.2) if kind in last_by_kind else int(size * ratio)
    return total
