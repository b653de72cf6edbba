"""Archive each Docker named volume through a read-only helper container."""

from __future__ import annotations

from workers.context import StepContext
from workers.steps.staging import expected_bytes, fresh_dir, with_paths
from workers.targets import volumes


def archive_volumes(run: dict, ctx: StepContext) -> dict:
    settings = ctx.settings
    ctx.progress.total = expected_bytes(ctx.tree, "volume")
    out_dir = fresh_dir(ctx.tree.staging_dir(run["id"], "volume"))
    present = run["steps"]["preflight"]["result"]["volumes"]
    artifacts, details = [], {}
    for name in present:
        result = volumes.archive(
            ctx.docker,
            name,
            settings.helper_image,
            out_dir,
            run["id"],
            ctx.codec,
            ctx.progress.add,
            stop_running=_may_stop(name, settings.stop_volumes_for),
        )
        artifacts += result.pop("artifacts")
        details[name] = result
    return {"artifacts": with_paths(artifacts), "volumes": details}


def _may_stop(volume: str, allowed: tuple[str, ...]) -> bool:
    return volume in allowed or "*" in allowed
