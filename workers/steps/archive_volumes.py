"""Archive each Docker named volume through a read-only helper container.

Each volume's artifact in the newest verified backup is handed to the target, which links
the unchanged files' parts from it instead of reading and compressing them again.
"""

from __future__ import annotations

from pathlib import Path

from workers.context import StepContext
from workers.steps.staging import expected_bytes, fresh_dir, with_paths
from workers.store import manifest as manifests
from workers.store import parts
from workers.store.codec import CorruptArtifact
from workers.store.layout import Tree
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
            previous=previous_artifact(ctx.tree, name),
            direct=settings.volumes_in_place(),
        )
        artifacts += result.pop("artifacts")
        details[name] = result
    return {"artifacts": with_paths(artifacts), "volumes": details}


def _may_stop(volume: str, allowed: tuple[str, ...]) -> bool:
    return volume in allowed or "*" in allowed


def previous_artifact(tree: Tree, volume: str) -> Path | None:
    """The volume's parted artifact in the newest verified backup, if intact in size."""
    for manifest in reversed(manifests.read_all(tree)):
        if manifest.get("status") != "verified":
            continue
        for artifact in manifest.get("artifacts", []):
            if artifact["kind"] != "volume" or artifact["source"] != volume:
                continue
            path = tree.artifact_path(artifact)
            plain_zstd = artifact.get("compression") == "zstd" and not artifact.get("encrypted")
            if not (plain_zstd and parts.is_parted(path) and path.is_dir()):
                continue
            try:
                if parts.stored_size(path) == artifact["size_bytes"]:
                    return path
            except (OSError, CorruptArtifact):
                continue
    return None
