"""`df`: the backup tree's usage by kind, and the volumes' usage (`docker system df -v`)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from workers.config import Settings
from workers.errors import TargetError
from workers.store.layout import Tree
from workers.targets import docker_engine
from workers.targets.docker_engine import containers_using_volume

SECTIONS = {"mysql": "mysql", "redis": "redis", "volumes": "volumes", ".staging": "staging"}


def _bytes_under(path: Path) -> int:
    """Bytes of the files under `path`, a file that several backups link counted once."""
    sizes = {}
    for file in path.rglob("*") if path.exists() else ():
        info = file.lstat()
        if stat.S_ISREG(info.st_mode):
            sizes[(info.st_dev, info.st_ino)] = info.st_size
    return sum(sizes.values())


def tree_usage(tree: Tree) -> dict[str, int]:
    usage = {label: _bytes_under(tree.root / sub) for sub, label in SECTIONS.items()}
    counted = sum(usage.values())
    usage["other"] = _bytes_under(tree.root) - counted  # manifests, journals, metrics
    return usage


def disk(path: Path) -> dict:
    total, used, free = shutil.disk_usage(path)
    return {"total": total, "used": used, "free": free, "percent": round(100 * used / total, 1)}


def volume_usage(engine, names: tuple[str, ...] | list[str]) -> list[dict]:
    """Size (as the engine measures it), mount point and users of each named volume."""
    measured = {v["Name"]: v for v in engine.df().get("Volumes") or []}
    out = []
    for name in names:
        info = measured.get(name)
        size = ((info or {}).get("UsageData") or {}).get("Size", -1)
        out.append(
            {
                "name": name,
                "exists": info is not None,
                "size_bytes": size if size >= 0 else None,
                "mountpoint": (info or {}).get("Mountpoint"),
                "containers": [c["name"] for c in containers_using_volume(engine, name)]
                if info
                else [],
            }
        )
    return out


def report(settings: Settings, warn_percent: int) -> dict:
    tree = Tree(settings.backup_dir)
    tree.ensure()
    out = {"backup_dir": str(tree.root), "tree": tree_usage(tree), "disk": disk(tree.root)}
    warnings = []
    if out["disk"]["percent"] >= warn_percent:
        warnings.append(
            f"the backup disk is {out['disk']['percent']}% full (warning at {warn_percent}%, "
            "XIEHE_DF_WARN_PERCENT): prune old backups (`xiehe-backup prune`) or add space"
        )
    if settings.volumes:
        try:
            out["volumes"] = volume_usage(
                docker_engine.client(settings.docker_url), settings.volumes
            )
        except TargetError as exc:
            warnings.append(f"volumes not measured: {exc}")
    out["warnings"] = warnings
    return out
