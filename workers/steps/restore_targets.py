"""Replace each kind of target with the backup's data: MySQL, Redis, volumes."""

from __future__ import annotations

from workers.context import StepContext
from workers.targets import mysql, redis, volumes


def _to_restore(run: dict, kind: str, ctx: StepContext) -> list[dict]:
    chosen = run["steps"]["preflight"]["result"]["artifacts_to_restore"]
    mine = [a for a in chosen if a["kind"] == kind]
    ctx.progress.total = sum(a.get("plain_bytes", 0) for a in mine)
    return mine


def restore_mysql(run: dict, ctx: StepContext) -> dict:
    done = []
    for artifact in _to_restore(run, "mysql", ctx):
        mysql.restore(
            ctx.settings.mysql_restore,
            ctx.tree.artifact_path(artifact),
            artifact["source"],
            ctx.settings.age_identity_file,
            ctx.progress.add,
        )
        done.append(artifact["source"])
    return {"databases": done}


def restore_redis(run: dict, ctx: StepContext) -> dict:
    (artifact,) = _to_restore(run, "redis", ctx)
    settings = ctx.settings.redis
    docker = ctx.docker if settings.container else None
    return redis.restore(
        settings,
        docker,
        ctx.tree.artifact_path(artifact),
        ctx.settings.age_identity_file,
        ctx.progress.add,
    )


def restore_volumes(run: dict, ctx: StepContext) -> dict:
    done = {}
    for artifact in _to_restore(run, "volume", ctx):
        done[artifact["source"]] = volumes.restore(
            ctx.docker,
            artifact["source"],
            ctx.tree.artifact_path(artifact),
            ctx.settings.helper_image,
            ctx.settings.age_identity_file,
            ctx.progress.add,
            direct=ctx.settings.volumes_in_place(),
        )
    return {"volumes": done}
