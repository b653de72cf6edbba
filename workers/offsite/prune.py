"""Remote retention: the local policy (workers/policy/retention.py) applied to what the
remote itself lists, so a remote that missed some runs keeps what it has.  The newest
verified remote copy is never deleted.  As locally, the manifest goes first: a backup cut
short in deletion is never taken for a complete one."""

from __future__ import annotations

from datetime import datetime

from workers.offsite import catalog
from workers.offsite.rclone import Rclone
from workers.ops.retention import summary
from workers.policy.retention import Policy, decide, is_good


def prune_remote(
    rclone: Rclone, policy: Policy, now: datetime | None = None, dry_run: bool = False
) -> dict:
    found = {m["id"]: m for m in catalog.manifests(rclone)}
    summaries = [summary(m) for m in found.values()]
    good = sorted((s for s in summaries if is_good(s)), key=lambda s: s["id"])
    newest = good[-1]["id"] if good else None
    decisions = decide(summaries, policy, now)
    for d in decisions:
        if d["id"] == newest and not d["keep"]:
            d.update(keep=True, rules=["newest verified remote copy"])
    doomed = [d["id"] for d in decisions if not d["keep"]]
    if not dry_run:
        for backup_id in doomed:
            files = catalog.files_of(found[backup_id])
            rclone.delete([files[-1]])  # the manifest: from here on it is not a backup
            rclone.delete(files[:-1])
    return {"dry_run": dry_run, "decisions": decisions, "deleted": [] if dry_run else doomed}
