"""Snapshot Redis without blocking it: BGSAVE in container mode, replication otherwise."""

from __future__ import annotations

from workers.context import StepContext
from workers.steps.staging import expected_bytes, fresh_dir, with_paths
from workers.targets import redis


def snapshot_redis(run: dict, ctx: StepContext) -> dict:
    settings = ctx.settings.redis
    checked = run["steps"]["preflight"]["result"]["targets"].get("redis", {})
    ctx.progress.total = expected_bytes(ctx.tree, "redis") or checked.get("used_memory")
    out_dir = fresh_dir(ctx.tree.staging_dir(run["id"], "redis"))
    docker = ctx.docker if settings.container else None
    result = redis.snapshot(settings, docker, out_dir, run["id"], ctx.codec, ctx.progress.add)
    return {**result, "artifacts": with_paths(result["artifacts"])}
