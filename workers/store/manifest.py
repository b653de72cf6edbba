"""The manifest: the machine-readable record of one backup, and the backup_info summary.

The manifest is written last: a backup without one is not a backup.  Its schema:
id, status (verified | failed-verification), created_at, finished_at, reason, kinds,
skipped, artifacts[{path, kind, source, size_bytes, sha256, compression, encrypted,
plain_bytes, plain_sha256}], size_bytes, mysql{server_version, binlog, snapshot,
databases{tables{rows, checksum}, views, routines, triggers, events}}, redis{mode,
redis_version, keys}, volumes{name: counts}, missing_volumes, steps{name: duration_s},
verification, drills, tool, host; warnings (policy/emptied.py) once published.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from workers.errors import NotFound
from workers.store import atomic
from workers.store.layout import Tree, is_backup_id

FORMAT = 1


def tool_version() -> str:
    try:
        return version("xiehe-backup")
    except PackageNotFoundError:
        return "dev"


def build(run: dict, artifacts: list[dict], verification: list[dict], finished_at: str) -> dict:
    results = {name: (rec.get("result") or {}) for name, rec in run["steps"].items()}
    mysql = {k: v for k, v in results.get("dump_mysql", {}).items() if k != "artifacts"}
    redis = {k: v for k, v in results.get("snapshot_redis", {}).items() if k != "artifacts"}
    preflight = results.get("preflight", {})
    return {
        "format": FORMAT,
        "id": run["id"],
        "status": "verified",
        "created_at": run["created_at"],
        "finished_at": finished_at,
        "reason": run.get("reason") or "",
        "kinds": sorted({_kind(a) for a in artifacts}),
        "skipped": run.get("skipped", {}),
        "artifacts": artifacts,
        "size_bytes": sum(a["size_bytes"] for a in artifacts),
        "mysql": mysql or None,
        "redis": redis or None,
        "volumes": results.get("archive_volumes", {}).get("volumes", {}),
        "missing_volumes": preflight.get("missing_volumes", []),
        "steps": {name: rec.get("duration_s") for name, rec in run["steps"].items()},
        "verification": {"at": finished_at, "artifacts": verification},
        "tool": {"name": "xiehe-backup", "version": tool_version()},
        "host": socket.gethostname(),
    }


def _kind(artifact: dict) -> str:
    return {"volume": "volumes", "mysql-index": "mysql"}.get(artifact["kind"], artifact["kind"])


def info_text(manifest: dict) -> str:
    """The seed plan's backup_info file: what a human on call wants to read first."""
    lines = [
        f"XieHe backup {manifest['id']}",
        f"status:      {manifest['status']}",
        f"created at:  {manifest['created_at']}",
        f"finished at: {manifest['finished_at']}",
        f"reason:      {manifest['reason'] or '-'}",
        f"host:        {manifest['host']}   tool: xiehe-backup {manifest['tool']['version']}",
        f"total size:  {manifest['size_bytes']} bytes",
    ]
    for kind, why in sorted(manifest.get("skipped", {}).items()):
        lines.append(f"skipped:     {kind} ({why})")
    for name in manifest.get("missing_volumes", []):
        lines.append(f"missing:     volume {name} did not exist at backup time")
    for warning in manifest.get("warnings", []):
        lines.append(f"WARNING:     {warning}")
    if manifest.get("mysql"):
        m = manifest["mysql"]
        lines.append(f"mysql:       {m.get('server_version')}  binlog: {m.get('binlog') or 'off'}")
    lines.append("")
    lines.append("artifacts (path, size, sha256):")
    for a in manifest["artifacts"]:
        lines.append(f"  {a['path']}  {a['size_bytes']}  {a['sha256']}")
    lines.append("")
    lines.append("restore: xiehe-backup restore " + manifest["id"] + " --yes")
    return "\n".join(lines) + "\n"


def last_verified(tree: Tree) -> dict | None:
    """The newest verified backup's manifest, if any (read newest first, only as far as it)."""
    for manifest in _readable(tree, reversed(tree.manifest_ids())):
        if manifest.get("status") == "verified":
            return manifest
    return None


def write(tree: Tree, manifest: dict) -> Path:
    path = tree.manifest(manifest["id"])
    atomic.write_json(path, manifest)
    return path


def read(tree: Tree, backup_id: str) -> dict:
    if not is_backup_id(backup_id):  # no path is built from a user's junk ("../", 10 kB)
        raise NotFound(unknown_id_message(tree, backup_id))
    path = tree.manifest(backup_id)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(unknown_id_message(tree, backup_id)) from None


def _readable(tree: Tree, backup_ids: Iterable[str]) -> Iterator[dict]:
    """The manifests of these ids that can be read (a damaged one is skipped)."""
    for backup_id in backup_ids:
        try:
            yield json.loads(tree.manifest(backup_id).read_text())
        except (OSError, json.JSONDecodeError):
            continue


def read_all(tree: Tree) -> list[dict]:
    return list(_readable(tree, tree.manifest_ids()))


def update(tree: Tree, backup_id: str, **fields) -> dict:
    """Rewrite a manifest with some fields changed (verification or drill outcome)."""
    manifest = read(tree, backup_id)
    manifest.update(fields)
    write(tree, manifest)
    return manifest


def unknown_id_message(tree: Tree, backup_id: str) -> str:
    ids = tree.manifest_ids()
    nearest = sorted(ids, key=lambda i: abs(_num(i) - _num(backup_id)))[:3]
    hint = f"; nearest: {', '.join(sorted(nearest))}" if nearest else "; there are no backups yet"
    shown = backup_id if len(backup_id) <= 40 else backup_id[:40] + "..."
    return f"unknown backup id {shown!r}{hint} (see `xiehe-backup list`)"


def _num(backup_id: str) -> int:
    digits = "".join(ch for ch in backup_id if ch.isdigit())[:14]  # YYYYMMDDHHMMSS
    return int(digits or 0)
