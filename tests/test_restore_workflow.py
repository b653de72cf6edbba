"""Restore end to end: back up, destroy, restore through the queue, compare everything."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from tests.support.cli import cli, last_line
from tests.support.stack import assert_same
from workers.store import locks
from workers.store.codec import Codec
from workers.store.parts import PartedWriter

BACKEND = "sleep 3600"


@pytest.fixture
def backend(docker_client, helper_image):
    """An application service the restore must stop and start again."""
    container = docker_client.containers.run(
        helper_image, BACKEND, detach=True, name=f"xiehe_backend_{id(object()):x}"
    )
    yield container
    container.remove(force=True)


def _started_at(container) -> str:
    container.reload()
    return container.attrs["State"]["StartedAt"]


def _backup(env) -> str:
    proc = cli(env, "backup")
    assert proc.returncode == 0, proc.stderr
    return last_line(proc)


def _manifest(env, backup_id) -> dict:
    return json.loads(cli(env, "show", backup_id, "--json").stdout)


def test_disaster_recovery_round_trip(stack, backend, worker_factory, mysql_conn, docker_client):
    st, env = stack
    env = {**env, "XIEHE_STOP_CONTAINERS": backend.name}
    worker_factory(env)
    before = st.snapshot()
    backup_id = _backup(env)
    # The disaster: database dropped, Redis flushed, the volume removed (compose down -v).
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{st.db}`")
    import redis as redis_py

    redis_py.Redis.from_url(st.redis_url).flushall()
    docker_client.volumes.get(st.volume_names[0]).remove(force=True)
    started = _started_at(backend)

    proc = cli(env, "restore", backup_id, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())
    assert _started_at(backend) != started  # stopped and started again
    backend.reload()
    assert backend.status == "running"
    listed = json.loads(cli(env, "list", "--json").stdout)
    safety = [b for b in listed if b["reason"] == f"pre-restore {backup_id}"]
    assert len(safety) == 1 and safety[0]["status"] == "verified"
    missing = _manifest(env, safety[0]["id"])["missing_volumes"]
    assert missing == st.volume_names
    run = json.loads((env_dir(env) / ".runs" / f"{last_line(proc)}.json").read_text())
    assert run["steps"]["report"]["result"]["rto_seconds"] > 0
    order = [
        "preflight",
        "stop_services",
        "safety_backup",
        "restore_mysql",
        "restore_redis",
        "restore_volumes",
        "start_services",
        "verify",
        "report",
        "notify",
    ]
    assert run["plan"] == order
    started = [run["steps"][name]["started_at"] for name in order]
    assert started == sorted(started)
    assert all(run["steps"][name]["status"] == "succeeded" for name in order)


def env_dir(env):
    from pathlib import Path

    return Path(env["XIEHE_BACKUP_DIR"])


def test_partial_restore_leaves_the_rest_untouched(stack, worker_factory, mysql_conn):
    st, env = stack
    worker_factory(env)
    backup_id = _backup(env)
    import redis as redis_py

    r = redis_py.Redis.from_url(st.redis_url)
    r.set("written-after-backup", "keep me")
    with mysql_conn.cursor() as cur:
        cur.execute(f"DELETE FROM `{st.db}`.studies")
    volume_before = st.snapshot()[f"volume:{st.volume_names[0]}"]
    proc = cli(env, "restore", backup_id, "--yes", "--only", f"db:{st.db}")
    assert proc.returncode == 0, proc.stderr
    assert r.get("written-after-backup") == b"keep me"
    after = st.snapshot()
    assert after["tables"]["studies"]["rows"] == 300
    assert after[f"volume:{st.volume_names[0]}"] == volume_before
    # Redis alone: the key written after the backup is gone, the database untouched.
    with mysql_conn.cursor() as cur:
        cur.execute(f"DELETE FROM `{st.db}`.audit")
    proc = cli(env, "restore", backup_id, "--yes", "--only", "redis")
    assert proc.returncode == 0, proc.stderr
    assert r.get("written-after-backup") is None
    assert st.snapshot()["tables"]["audit"]["rows"] == 0


def test_the_backup_restored_outlives_the_prune_of_its_safety_backup(
    stack, worker_factory, mysql_conn
):
    """The restore's safety backup prunes as every backup does; with the newest kept only,
    that would delete the backup being restored, between its preflight and its restore."""
    st, env = stack
    keep = {f"XIEHE_KEEP_{k}": "0" for k in ("DAILY", "WEEKLY", "MONTHLY")}
    env = {**env, **keep, "XIEHE_KEEP_LAST": "1"}
    worker_factory(env)
    before = st.snapshot()
    backup_id = _backup(env)
    with mysql_conn.cursor() as cur:
        cur.execute(f"DELETE FROM `{st.db}`.studies")
    proc = cli(env, "restore", backup_id, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())
    listed = {r["id"] for r in json.loads(cli(env, "list", "--json").stdout)}
    assert backup_id in listed  # kept while in use; the next prune takes it


def test_corrupt_backup_is_refused_before_anything_stops(stack, backend, worker_factory):
    st, env = stack
    env = {**env, "XIEHE_STOP_CONTAINERS": backend.name}
    worker_factory(env)
    backup_id = _backup(env)
    manifest = _manifest(env, backup_id)
    dump = env_dir(env) / next(a["path"] for a in manifest["artifacts"] if a["kind"] == "mysql")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    before, started = st.snapshot(), _started_at(backend)
    proc = cli(env, "restore", backup_id, "--yes")
    assert proc.returncode == 1
    assert "sha256" in proc.stderr and "preflight" in proc.stderr
    assert "nothing was replaced" in proc.stderr
    assert _started_at(backend) == started
    assert_same(before, st.snapshot())


def test_failure_midway_restarts_services_and_keeps_safety_backup(
    stack, backend, worker_factory, mysql_conn
):
    st, env = stack
    env = {**env, "XIEHE_STOP_CONTAINERS": backend.name}
    worker = worker_factory(env)
    backup_id = _backup(env)
    worker.stop()
    # The restore runs with the backup-only account: it can take the safety backup but
    # not drop or load a database, so the restore fails after services were stopped.
    read_only = {
        **env,
        "XIEHE_MYSQL_RESTORE_USER": env["XIEHE_MYSQL_USER"],
        "XIEHE_MYSQL_RESTORE_PASSWORD": env["XIEHE_MYSQL_PASSWORD"],
    }
    worker_factory(read_only)
    proc = cli(read_only, "restore", backup_id, "--yes", "--only", "mysql")
    assert proc.returncode == 1
    assert "restore_mysql" in proc.stderr
    assert "xiehe-backup restore" in proc.stderr and "--yes" in proc.stderr
    backend.reload()
    assert backend.status == "running"
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert any(b["reason"] == f"pre-restore {backup_id}" for b in listed)
    assert env["XIEHE_MYSQL_PASSWORD"] not in json.dumps(listed)


def test_bad_requests_are_refused_clearly(stack, worker_factory, broker):
    st, env = stack
    worker_factory({**env, "XIEHE_LOCK_WAIT": "0"})
    backup_id = _backup(env)
    unknown = cli(env, "restore", "20000101_000000", "--yes")
    assert unknown.returncode == 1 and "nearest" in unknown.stderr and backup_id in unknown.stderr
    no_tty = cli(env, "restore", backup_id, stdin="")
    assert no_tty.returncode == 1 and "--yes" in no_tty.stderr
    bad_only = cli(env, "restore", backup_id, "--yes", "--only", "db:nope")
    assert bad_only.returncode == 1 and st.db in bad_only.stderr
    # A backup of the same target is running (its lock is held): the restore is refused.
    held = locks.acquire(broker.client(), ["mysql:127.0.0.1:3306"], "20991231_000000", 60, 0)
    try:
        busy = cli(env, "restore", backup_id, "--yes", "--only", "mysql")
    finally:
        locks.release(broker.client(), held)
    assert busy.returncode == 1 and "locked by run 20991231_000000" in busy.stderr


def test_archive_with_traversal_is_refused(stack, worker_factory, tmp_path):
    st, env = stack
    worker_factory(env)
    backup_id = _backup(env)
    root = env_dir(env)
    manifest_path = root / f"manifest_{backup_id}.json"
    manifest = json.loads(manifest_path.read_text())
    artifact = next(a for a in manifest["artifacts"] if a["kind"] == "volume")
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name, kind, link in (
            ("../escape", tarfile.REGTYPE, ""),
            ("abs", tarfile.SYMTYPE, "/etc/passwd"),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    path = root / artifact["path"]  # a parted artifact: replaced by a parted evil one
    writer = PartedWriter(tmp_path / "evil.tar", Codec())
    writer.write(evil.getvalue())
    record = writer.commit()
    shutil.rmtree(path)
    (tmp_path / "evil.tar.zst.parts").replace(path)
    artifact.update({k: record[k] for k in ("size_bytes", "sha256", "plain_bytes", "parts")})
    manifest_path.write_text(json.dumps(manifest))
    before = st.snapshot()
    proc = cli(env, "restore", backup_id, "--yes")
    assert proc.returncode == 1
    assert "escape" in proc.stderr or ".." in proc.stderr
    assert_same(before, st.snapshot())


def test_encrypted_backup_needs_only_public_keys_and_restores_with_the_identity(
    stack, worker_factory, mysql_conn, tmp_path
):
    import pyrage

    st, env = stack
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o600)
    backup_env = {**env, "XIEHE_AGE_RECIPIENTS": str(identity.to_public())}
    worker = worker_factory(backup_env)  # this worker holds no private key
    before = st.snapshot()
    backup_id = _backup(backup_env)
    manifest = _manifest(backup_env, backup_id)
    assert all(a["encrypted"] for a in manifest["artifacts"] if a["kind"] != "mysql-index")
    dump = env_dir(env) / next(a["path"] for a in manifest["artifacts"] if a["kind"] == "mysql")
    assert dump.name.endswith(".sql.zst.age") and "患者".encode() not in dump.read_bytes()
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{st.db}`")
    no_key = cli(backup_env, "restore", backup_id, "--yes")  # nobody can decrypt: refused
    assert no_key.returncode == 1 and "XIEHE_AGE_IDENTITY_FILE" in no_key.stderr
    worker.stop()
    restore_env = {**backup_env, "XIEHE_AGE_IDENTITY_FILE": str(key_file)}
    worker_factory(restore_env)
    proc = cli(restore_env, "restore", backup_id, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())


def test_a_tree_others_can_write_is_refused(stack, worker_factory):
    st, env = stack
    worker_factory(env)
    backup_id = _backup(env)
    before = st.snapshot()
    (env_dir(env) / "mysql").chmod(0o777)
    proc = cli(env, "restore", backup_id, "--yes")
    assert proc.returncode == 1 and "writable by other users" in proc.stderr
    assert_same(before, st.snapshot())
