"""Restore drill: restore a backup into scratch targets, compare with what the backup
recorded, time it (the RTO figure) and record the outcome in the backup's manifest.

Scratch targets only, never the production ones: MySQL databases `drill_<id>_<db>` on the
configured server, a private redis-server on a Unix socket in a 0700 temporary directory,
Docker volumes `drill_<id>_<volume>`.  Every scratch target is removed afterwards.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from workers.clock import now_iso
from workers.config import Settings
from workers.errors import NotFound
from workers.ops import alerts, inuse, metrics
from workers.store import manifest as manifests
from workers.store.codec import read_plain
from workers.store.layout import Tree
from workers.targets import docker_engine, mysql, volumes
from workers.targets.mysql.common import connect, qi

SCRATCH = "drill_"
REDIS_START = 60.0  # seconds for a temporary redis-server to load an RDB


def scratch_name(backup_id: str, source: str, limit: int = 64) -> str:
    return f"{SCRATCH}{backup_id}_{source}"[:limit]


def _outcome(fn: Callable[[], dict]) -> dict:
    """A kind's comparison; an error restoring it is that kind's failure, not the drill's end."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded as the failure's cause
        return {"ok": False, "error": str(exc) or type(exc).__name__}


def _compare(expected: dict, found: dict) -> list[str]:
    keys = sorted(set(expected) | set(found), key=str)
    return [
        f"{k}: expected {expected.get(k)}, found {found.get(k)}"
        for k in keys
        if expected.get(k) != found.get(k)
    ]


# --- MySQL -------------------------------------------------------------------------------


def _drop(settings: Settings, database: str) -> None:
    conn = connect(settings.mysql_restore)
    try:
        conn.query(f"DROP DATABASE IF EXISTS {qi(database)}")
    finally:
        conn.close()


def drill_mysql(settings: Settings, tree: Tree, manifest: dict, artifact: dict) -> dict:
    source = artifact["source"]
    scratch = scratch_name(manifest["id"], source)
    recorded = manifest["mysql"]["databases"][source]
    expected = recorded["tables"]
    try:
        mysql.restore(
            settings.mysql_restore,
            tree.artifact_path(artifact),
            scratch,
            settings.age_identity_file,
            lambda _n: None,
        )
        found = mysql.checksums(settings.mysql_restore, scratch, recorded.get("rendering", 1))
    finally:
        _drop(settings, scratch)
    mismatches = _compare(expected, found)
    return {"ok": not mismatches, "tables": len(found), "mismatches": mismatches[:20]}


# --- Redis -------------------------------------------------------------------------------


def _start_redis(workdir: Path) -> tuple[subprocess.Popen, redis.Redis]:
    sock = workdir / "redis.sock"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(workdir),
            "--dbfilename",
            "dump.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=str(sock))
    deadline = time.monotonic() + REDIS_START
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.ping():
                return proc, client
        except (redis.ConnectionError, redis.BusyLoadingError):
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("the temporary redis-server did not load the RDB (see its version)")


def drill_redis(settings: Settings, tree: Tree, manifest: dict, artifact: dict) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="xiehe-drill-"))  # mkdtemp: 0700
    try:
        with open(workdir / "dump.rdb", "wb") as out:
            for chunk in read_plain(tree.artifact_path(artifact), settings.age_identity_file):
                out.write(chunk)
        proc, client = _start_redis(workdir)
        try:
            found = {int(db[2:]): v["keys"] for db, v in client.info("keyspace").items()}
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    expected = {int(db): n for db, n in (manifest.get("redis") or {}).get("keys", {}).items()}
    mismatches = _compare(expected, found)
    return {"ok": not mismatches, "keys": sum(found.values()), "mismatches": mismatches}


# --- volumes -----------------------------------------------------------------------------


def drill_volume(settings: Settings, tree: Tree, manifest: dict, artifact: dict, engine) -> dict:
    source = artifact["source"]
    scratch = scratch_name(manifest["id"], source, limit=255)
    recorded = manifest.get("volumes", {}).get(source, {})
    try:
        volumes.restore(
            engine,
            scratch,
            tree.artifact_path(artifact),
            settings.helper_image,
            settings.age_identity_file,
            labels={"xiehe.drill": manifest["id"]},
            direct=settings.volumes_in_place(),
        )
        inventory = volumes.file_inventory(engine, scratch, settings.helper_image)
    finally:
        _remove_volume(engine, scratch)
    files = sum(1 for entry in inventory.values() if entry.get("type") in ("file", "hardlink"))
    mismatches = []
    if recorded.get("manifest_sha256") != volumes.manifest_sha256(inventory):
        mismatches.append("the restored tree's content digest differs from the backup's")
    return {
        "ok": not mismatches,
        "entries": len(inventory),
        "files": files,
        "mismatches": mismatches,
    }


def _remove_volume(engine, name: str) -> None:
    try:
        engine.volumes.get(name).remove(force=True)
    except Exception:  # noqa: BLE001 - absent (restore failed before creating it) is fine
        pass


# --- the drill ---------------------------------------------------------------------------


def newest_verified(tree: Tree) -> str:
    good = [m["id"] for m in manifests.read_all(tree) if m.get("status") == "verified"]
    if not good:
        raise NotFound("no verified backup to drill (see `xiehe-backup list`)")
    return good[-1]


def run_drill(settings: Settings, tree: Tree, manifest: dict) -> dict:
    started = time.monotonic()
    details: dict[str, dict] = {}
    engine = functools.cache(lambda: docker_engine.client(settings.docker_url))
    for artifact in manifest["artifacts"]:
        kind, source = artifact["kind"], artifact.get("source")
        if kind == "mysql":
            details[f"mysql:{source}"] = _outcome(
                lambda a=artifact: drill_mysql(settings, tree, manifest, a)
            )
        elif kind == "redis":
            details["redis"] = _outcome(lambda a=artifact: drill_redis(settings, tree, manifest, a))
        elif kind == "volume":
            details[f"volume:{source}"] = _outcome(
                lambda a=artifact: drill_volume(settings, tree, manifest, a, engine())
            )
    return {
        "at": now_iso(),
        "ok": bool(details) and all(d["ok"] for d in details.values()),
        "rto_seconds": round(time.monotonic() - started, 1),
        "details": details,
    }


def drill(settings: Settings, backup_id: str | None = None) -> dict:
    """Drill one backup (default: the newest verified); the record is also in its manifest."""
    tree = Tree(settings.backup_dir)
    backup_id = backup_id or newest_verified(tree)
    manifest = manifests.read(tree, backup_id)
    with inuse.using(inuse.broker(settings), backup_id, f"drill-{backup_id}", settings.lock_ttl):
        record = run_drill(settings, tree, manifest)
        drills = manifests.read(tree, backup_id).get("drills", [])
        manifests.update(tree, backup_id, drills=[*drills, record])
    metrics.write(tree)
    if not record["ok"]:
        failing = {k: v for k, v in record["details"].items() if not v["ok"]}
        alerts.notify(
            {"event": "drill.failed", "status": "failed", "id": backup_id, "details": failing}
        )
    return {"id": backup_id, **record}
