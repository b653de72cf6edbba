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


def expected_bytes(tree, kind: str) -> int | None:
    """The plaintext size of this kind in the newest backup: the progress bar's estimate."""
    from workers.store import manifest as manifests

    for backup_id in reversed(tree.manifest_ids()):
        try:
            found = manifests.read(tree, backup_id)["artifacts"]
        except (OSError, ValueError):
            continue
        sizes = [a.get("plain_bytes", 0) for a in found if a["kind"] == kind]
        if sizes:
            return sum(sizes)
    return None
