"""Remote retention: the local policy (workers/policy/retention.py) applied to what the
remote itself lists, so a remote that missed some runs keeps what it has.  The newest
verified remote copy is never deleted.  As locally, the manifest goes first: a backup cut
short in deletion is never taken for a complete one; its leftover files (and those of an
upload abandoned for good) are removed by the next prune, unless the backup is still one
this host may send (`sendable`: a copy cut short is completed, not deleted).  A part in
the pool goes once no backup left on the remote names it (a copy cut short sends again
those of its parts pruned meanwhile)."""

from __future__ import annotations

import re
from datetime import datetime

from workers.offsite import catalog
from workers.offsite.rclone import Rclone
from workers.ops.retention import summary
from workers.policy.retention import Policy, decide, is_good

_OWNER = re.compile(r"_(\d{8}_\d{6})\.")  # the backup id a file of the tree carries


def _orphans(listing: dict, complete: set[str], sendable: set[str]) -> list[str]:
    """Files of backups without a manifest on the remote that will not be completed."""
    out = []
    for rel in listing:
        owner = _OWNER.search(rel.rsplit("/", 1)[-1])
        if owner and owner.group(1) not in complete | sendable:
            out.append(rel)
    return sorted(out)


def prune_remote(
    rclone: Rclone,
    policy: Policy,
    now: datetime | None = None,
    dry_run: bool = False,
    sendable: frozenset[str] = frozenset(),
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
    listing = rclone.listing(hashes=False)
    orphans = _orphans(listing, set(found), set(sendable))
    kept = {rel for i, m in found.items() if i not in doomed for rel in catalog.files_of(m)}
    unshared = sorted(r for r in listing if catalog.is_pooled(r) and r not in kept)
    if not dry_run:
        for backup_id in doomed:
            files = catalog.files_of(found[backup_id])
            rclone.delete([files[-1]])  # the manifest: from here on it is not a backup
            rclone.delete([rel for rel in files[:-1] if not catalog.is_pooled(rel)])
        rclone.delete(orphans + unshared)
    return {
        "dry_run": dry_run,
        "decisions": decisions,
        "deleted": [] if dry_run else doomed,
        "orphans": orphans,
        "unshared_parts": len(unshared),
    }
