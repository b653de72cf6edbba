"""Preflight of a restore: the backup exists and verifies, targets answer, locks are held.

Everything that can refuse a restore refuses here, before any service is stopped or any
data replaced: a corrupt or truncated artifact, an unsafe archive, a tree other users can
write, a backup of the same target still running.
"""

from __future__ import annotations

import os
import stat

from workers.context import StepContext
from workers.errors import BackupError
from workers.steps.restore_scope import kinds_of, selected_artifacts
from workers.steps.targets_of import lock_targets
from workers.steps.verify_backup import verify_all
from workers.store import journal
from workers.store import manifest as manifests
from workers.targets import docker_engine, mysql, redis


def refuse_unsafe_tree(root, paths) -> None:
    """A tree others can write could hold a planted artifact: refuse to restore from it."""
    for path in [root, *paths]:
        mode = os.stat(path).st_mode
        if mode & stat.S_IWOTH or mode & stat.S_IWGRP:
            raise BackupError(f"{path} is writable by other users; fix with chmod go-w and retry")


def preflight_restore(run: dict, ctx: StepContext) -> dict:
    settings, tree = ctx.settings, ctx.tree
    backup_id = run["backup_id"]
    if not tree.manifest(backup_id).exists():
        record = journal.load(tree, backup_id)
        if record and record.get("status") in ("running", "queued"):
            raise BackupError(f"backup {backup_id} is still in progress; wait for it to finish")
        if record:
            raise BackupError(
                f"backup {backup_id} {record.get('status')}: "
                f"{record.get('error', 'it never completed')}; choose another"
            )
    manifest = manifests.read(tree, backup_id)
    if manifest.get("status") != "verified":
        raise BackupError(
            f"backup {backup_id} is {manifest.get('status')}, not verified; "
            "choose another (xiehe-backup list)"
        )
    artifacts = selected_artifacts(manifest, run["only"])
    paths = [tree.artifact_path(a) for a in artifacts]
    refuse_unsafe_tree(tree.root, {p.parent for p in paths} | set(paths))
    checked = verify_all(tree.root, artifacts, settings.age_identity_file)
    for artifact in artifacts:
        if artifact.get("encrypted") and settings.age_identity_file is None:
            raise BackupError("the backup is encrypted: set XIEHE_AGE_IDENTITY_FILE to restore")
    kinds = kinds_of(artifacts)
    targets = _check_targets(ctx, kinds, artifacts)
    volumes = [a["source"] for a in artifacts if a["kind"] == "volume"]
    run["locks"] = lock_targets(ctx, run, kinds, volumes, reading=backup_id)
    return {
        "artifacts_to_restore": artifacts,
        "kinds": kinds,
        "checked": checked,
        "targets": targets,
        "manifest_created_at": manifest["created_at"],
    }


def _check_targets(ctx: StepContext, kinds: list[str], artifacts: list[dict]) -> dict:
    settings, found = ctx.settings, {}
    if "mysql" in kinds:
        if settings.mysql is None:
            raise BackupError("mysql: XIEHE_MYSQL_HOST is not set; cannot restore MySQL")
        found["mysql"] = mysql.check(settings.mysql)["server_version"]
    if "redis" in kinds:
        if settings.redis is None:
            raise BackupError("redis: XIEHE_REDIS_URL is not set; cannot restore Redis")
        if not settings.redis.container:
            found["redis"] = redis.check(settings.redis)["redis_version"]
    if (
        "volumes" in kinds
        or settings.stop_containers
        or (settings.redis and settings.redis.container)
    ):
        engine = ctx.docker
        for artifact in artifacts:
            if artifact["kind"] != "volume":
                continue
            busy = [
                c["name"]
                for c in docker_engine.containers_using_volume(engine, artifact["source"])
                if c["running"] and c["name"] not in settings.stop_containers
            ]
            if busy:
                raise BackupError(
                    f"volume:{artifact['source']} is in use by running {', '.join(busy)}; add "
                    "them to XIEHE_STOP_CONTAINERS so the restore stops and restarts them"
                )
        found["docker"] = "ok"
    return found
