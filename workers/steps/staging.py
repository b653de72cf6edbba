"""Helpers shared by the steps that write artifacts into a run's staging directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from workers.store.layout import KIND_DIRS


def fresh_dir(path: Path) -> Path:
    """An empty directory: a step delivered again after a crash starts from clean."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def with_paths(artifacts: list[dict]) -> list[dict]:
    """Give each artifact its path relative to the backup root, where publish puts it."""
    return [{**a, "path": f"{KIND_DIRS[a['kind']]}/{a['file']}"} for a in artifacts]


def all_artifacts(run: dict) -> list[dict]:
    out: list[dict] = []
    for record in run.get("steps", {}).values():
        out += (record.get("result") or {}).get("artifacts", [])
    return out
