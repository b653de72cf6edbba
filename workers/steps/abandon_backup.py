"""What a failed backup leaves behind: nothing but its journal.  Good backups are untouched."""

from __future__ import annotations

import shutil

from workers.context import StepContext
from workers.store import parts


def abandon_backup(run: dict, ctx: StepContext) -> dict:
    tree = ctx.tree
    shutil.rmtree(tree.staging(run["id"]), ignore_errors=True)
    removed = []
    if not tree.manifest(run["id"]).exists():  # a publish cut short: its files are orphans
        for path in tree.files_of(run["id"]):
            parts.remove(path)
            removed.append(path.name)
    return {"removed": removed}
