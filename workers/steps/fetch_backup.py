"""A restore's first step when the backup is taken from a remote (`restore ID --from`):
bring it into the local tree; the preflight then checks it like any local backup."""

from __future__ import annotations

from workers.context import StepContext
from workers.offsite import settings as offsite_settings
from workers.offsite.fetch import fetch
from workers.offsite.lock import holding
from workers.offsite.rclone import Rclone


def fetch_backup(run: dict, ctx: StepContext) -> dict:
    offsite = offsite_settings.load()
    rclone = Rclone(offsite.remote(run["from_remote"]), offsite)
    with holding(ctx.broker, ctx.settings, run["from_remote"], run["id"]):  # no prune meanwhile
        return fetch(ctx.tree, rclone, run["backup_id"], on_bytes=ctx.progress.add)
