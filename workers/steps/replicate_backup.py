"""The backup's off-site copy, after it is verified and published (3-2-1).

It never fails the backup: a remote that cannot be reached leaves the backup marked
`local-only` for it, with an alert, and the next run sends what is missing.
"""

from __future__ import annotations

from workers.context import StepContext
from workers.offsite import settings as offsite_settings
from workers.offsite.replicate import replicate_pending
from workers.ops import settings as ops_settings


def replicate_backup(run: dict, ctx: StepContext) -> dict:
    offsite = offsite_settings.load()
    if not offsite.remotes:
        return {"skipped": "no off-site remote is configured (XIEHE_OFFSITE)"}
    policy = ops_settings.load().policy
    try:
        remotes = replicate_pending(
            ctx.settings, offsite, ctx.broker, run["id"], policy, on_bytes=ctx.progress.add
        )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return {"error": f"off-site copy did not run: {exc}"}
    return {"remotes": remotes}
