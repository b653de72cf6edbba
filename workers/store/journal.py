"""The run journal: one JSON file per run with every step's status and result."""

from __future__ import annotations

import json
from pathlib import Path

from workers.store import atomic
from workers.store.layout import Tree


def save(tree: Tree, run: dict) -> None:
    path = tree.journal(run["id"])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic.write_json(path, run)


def load(tree: Tree, run_id: str) -> dict | None:
    path: Path = tree.journal(run_id)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def all_runs(tree: Tree) -> list[dict]:
    runs = []
    for path in sorted((tree.root / ".runs").glob("*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return runs
