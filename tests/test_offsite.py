"""Off-site copies end to end: a real OpenSSH server and an S3-compatible endpoint, real
workers, the real CLI.  Back up, lose the host's tree and data, restore from the remote."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import time
from pathlib import Path

import pytest
import redis as redis_py

from tests.support.cli import cli, last_line
from tests.support.offsite import SFTP_USER, S3Server, SftpServer
from tests.support.stack import assert_same
from tests.support.webhook import Receiver
from workers.offsite import catalog
from workers.store import parts

FAST_RETRY = {"XIEHE_OFFSITE_RETRIES": "2", "XIEHE_OFFSITE_BACKOFF_S": "1"}


def _backup(env) -> str:
    proc = cli(env, "backup")
    assert proc.returncode == 0, proc.stderr
    return last_line(proc)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _local_manifest(env, backup_id) -> dict:
    return json.loads((Path(env["XIEHE_BACKUP_DIR"]) / f"manifest_{backup_id}.json").read_text())


def test_sftp_copy_then_disaster_recovery_from_it(
    stack, sftp_server, worker_factory, mysql_conn, docker_client
):
    st, env = stack
    env = {**env, **FAST_RETRY, "XIEHE_OFFSITE": f"dr={sftp_server.url()}"}
    worker_factory(env)
    before = st.snapshot()
    backup_id = _backup(env)

    # The remote holds every artifact, byte for byte, and the manifest.
    manifest = _local_manifest(env, backup_id)
    assert manifest["offsite"]["dr"]["status"] == "replicated"
    assert "key_file" not in json.dumps(manifest)  # the logged URL carries no options
    for artifact in manifest["artifacts"]:
        assert parts.stored_sha256(sftp_server.root / artifact["path"]) == artifact["sha256"]
    [volume] = [a for a in manifest["artifacts"] if a["kind"] == "volume"]
    volume_parts = parts.read_list(sftp_server.root / volume["path"])
    assert len(volume_parts) > 1
    for part in volume_parts:  # in the remote's pool, named by content
        pooled = sftp_server.root / catalog.pool_path(part.sha256)
        assert hashlib.sha256(pooled.read_bytes()).hexdigest() == part.sha256
    remote_manifest = json.loads((sftp_server.root / f"manifest_{backup_id}.json").read_text())
    whole = {a["path"] for a in manifest["artifacts"] if a is not volume}
    listed_files = {catalog.list_path(volume), f"backup_info_{backup_id}.txt"}
    pooled = {catalog.pool_path(part.sha256) for part in volume_parts}
    assert set(remote_manifest["md5"]) == whole | listed_files | pooled
    listed = json.loads(cli(env, "list", "--remote", "dr", "--json").stdout)
    assert [r["id"] for r in listed] == [backup_id]
    proc = cli(env, "verify", "--remote", "dr", backup_id)
    assert proc.returncode == 0 and "verified on dr" in proc.stdout, proc.stdout + proc.stderr

    # A damaged remote copy (same size, one byte flipped) is caught by the remote's md5sum.
    victim = sftp_server.root / manifest["artifacts"][0]["path"]
    good = victim.read_bytes()
    victim.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    proc = cli(env, "verify", "--remote", "dr", backup_id)
    assert proc.returncode == 1 and manifest["artifacts"][0]["path"] in proc.stdout
    victim.write_bytes(good)

    # The host is lost: its backup tree, the database, Redis and the volume.
    shutil.rmtree(env["XIEHE_BACKUP_DIR"])
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{st.db}`")
    redis_py.Redis.from_url(st.redis_url).flushall()
    docker_client.volumes.get(st.volume_names[0]).remove(force=True)
    assert cli(env, "restore", backup_id, "--yes").returncode != 0  # not local any more

    proc = cli(env, "restore", backup_id, "--from", "dr", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())
    run = json.loads(
        (Path(env["XIEHE_BACKUP_DIR"]) / ".runs" / f"{last_line(proc)}.json").read_text()
    )
    assert run["plan"][:2] == ["fetch", "preflight"]
    assert run["steps"]["fetch"]["result"]["files"] == len(remote_manifest["md5"])
    assert _local_manifest(env, backup_id)["fetched_from"]["remote"] == "dr"


def test_connection_cut_mid_upload_keeps_local_and_next_run_completes(
    stack, sftp_server, worker_factory, docker_client, helper_image
):
    st, env = stack
    # Slow enough to cut: 2 MB of noise in the volume, sent at 256 kB/s.
    noise = "head -c 2000000 /dev/urandom > /v/noise.dcm"
    _in_volume(docker_client, helper_image, st.volume_names[0], noise)
    hook = Receiver()
    env = {
        **env,
        **FAST_RETRY,
        "XIEHE_OFFSITE": f"dr={sftp_server.url()}",
        "XIEHE_OFFSITE_BWLIMIT": "256k",
        "XIEHE_OFFSITE_TIMEOUT_S": "5",
        "XIEHE_NOTIFY_URLS": hook.url,
    }
    worker_factory(env)
    backup_id = last_line(cli(env, "backup", "--detach"))
    pool = sftp_server.root / catalog.POOL
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 200_000 for p in pool.glob("*.zst")):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.1)
    sftp_server.kill()  # the connection is cut, and the server stays away

    deadline = time.monotonic() + 180
    while (Path(env["XIEHE_BACKUP_DIR"]) / ".runs" / f"{backup_id}.json").exists() and json.loads(
        (Path(env["XIEHE_BACKUP_DIR"]) / ".runs" / f"{backup_id}.json").read_text()
    ).get("status") not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "the backup never ended"
        time.sleep(0.2)
    manifest = _local_manifest(env, backup_id)
    assert manifest["status"] == "verified"
    assert manifest["offsite"]["dr"]["status"] == "local-only"
    assert not (sftp_server.root / f"manifest_{backup_id}.json").exists()
    assert cli(env, "verify", backup_id).returncode == 0  # the local backup is good
    [alert] = hook.bodies  # one alert: the off-site copy, not the backup, failed
    assert f"offsite.failed {backup_id}" in alert["title"]
    assert "local only" in alert["message"]
    listed = {r["id"]: r for r in json.loads(cli(env, "list", "--json").stdout)}
    assert listed[backup_id]["offsite"] == {"dr": "local-only"}

    sftp_server.start()
    second = _backup(env)
    for done in (backup_id, second):
        assert (sftp_server.root / f"manifest_{done}.json").exists(), done
        assert _local_manifest(env, done)["offsite"]["dr"]["status"] == "replicated"
        proc = cli(env, "verify", "--remote", "dr", done)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(hook.bodies) == 1
    hook.server.shutdown()


def _in_volume(docker_client, helper_image, volume: str, script: str) -> None:
    """Run a shell script with the volume at /v."""
    box = docker_client.containers.create(
        helper_image, ["sh", "-c", script], volumes={volume: {"bind": "/v", "mode": "rw"}}
    )
    box.start()
    box.wait()
    box.remove()


def _sent(env, backup_id: str, remote: str) -> dict:
    """What the backup's replicate step sent of it to the remote."""
    run = json.loads((Path(env["XIEHE_BACKUP_DIR"]) / ".runs" / f"{backup_id}.json").read_text())
    copies = run["steps"]["replicate"]["result"]["remotes"][remote]["sent"]
    return next(c for c in copies if c["id"] == backup_id)


def _remote_manifest(env, remote: str, backup_id: str) -> dict:
    from workers.offsite import settings as offsite_settings
    from workers.offsite.rclone import Rclone

    offsite = offsite_settings.load(env)
    [where] = [r for r in offsite.remotes if r.name == remote]
    return catalog.manifest(Rclone(where, offsite), backup_id)


def _pooled(manifest: dict) -> set[str]:
    return {rel for rel in manifest["md5"] if catalog.is_pooled(rel)}


def test_unchanged_parts_go_off_site_once_and_outlive_the_backup_that_sent_them(
    stack, sftp_server, s3_server, worker_factory, docker_client, helper_image, mysql_conn
):
    st, env = stack
    only_newest = {f"XIEHE_KEEP_{k}": "0" for k in ("DAILY", "WEEKLY", "MONTHLY")}
    worm = f"{s3_server.url('xiehe-worm', 'prod')}&prune=off"  # expires copies by age itself
    env = {
        **env,
        **FAST_RETRY,
        **only_newest,
        "XIEHE_KEEP_LAST": "1",
        "XIEHE_OFFSITE": f"dr={sftp_server.url()},worm={worm}",
        "XIEHE_OFFSITE_WORM_ACCESS_KEY_ID": S3Server.ACCESS_KEY,
        "XIEHE_OFFSITE_WORM_SECRET_ACCESS_KEY": S3Server.SECRET_KEY,
    }
    worker_factory(env)
    volume = st.volume_names[0]
    scans = "for i in 1 2 3 4 5 6; do head -c 300000 /dev/urandom > /v/scan$i.dcm; done"
    _in_volume(docker_client, helper_image, volume, scans)
    first = _backup(env)
    first_pool = _pooled(_remote_manifest(env, "dr", first))
    _in_volume(docker_client, helper_image, volume, "head -c 200000 /dev/urandom > /v/new.dcm")
    before = st.snapshot()
    second = _backup(env)

    # Parts the first copy sent were neither read nor sent again: what was reused is
    # exactly the second backup's parts already in the pool, the six scans among them.
    manifest, dr = _local_manifest(env, second), _remote_manifest(env, "dr", second)
    assert set(manifest["pooled_md5"]) == _pooled(dr)  # kept for the next copy
    sizes = {
        catalog.pool_path(p.sha256): p.size
        for a in manifest["artifacts"]
        if "parts" in a
        for p in parts.read_list(Path(env["XIEHE_BACKUP_DIR"]) / a["path"])
    }
    shared = _pooled(dr) & first_pool
    sent = _sent(env, second, "dr")
    assert sent["reused_bytes"] == sum(sizes[rel] for rel in shared) >= 6 * 300_000
    assert sent["sent_bytes"] + sent["reused_bytes"] == sum(
        (sftp_server.root / rel).stat().st_size for rel in dr["md5"]
    )

    # Remote retention (the newest only) took the first copy and the parts only it named:
    # the pool holds the second's parts, each once.
    assert not (sftp_server.root / catalog.manifest_name(first)).exists()
    pool = {f"{catalog.POOL}/{p.name}" for p in (sftp_server.root / catalog.POOL).iterdir()}
    assert pool == _pooled(dr) and first_pool - pool

    # A remote we do not prune holds each copy whole, its parts beside its list: the
    # lifecycle rule that expires the first copy cannot take a part the second one needs.
    worm = _remote_manifest(env, "worm", second)
    assert not _pooled(worm) and manifest["offsite"]["worm"]["status"] == "replicated"
    worm_parts = [rel for rel in worm["md5"] if rel.endswith(".zst")]
    assert len([rel for rel in worm_parts if rel.startswith("volumes/")]) > 6
    proc = cli(env, "verify", "--remote", "worm", second)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The host is lost; the second backup comes back whole from each remote.
    docker_client.volumes.get(volume).remove(force=True)
    shutil.rmtree(env["XIEHE_BACKUP_DIR"])
    proc = cli(env, "restore", second, "--from", "worm", "--only", "volumes", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())
    shutil.rmtree(env["XIEHE_BACKUP_DIR"])
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{st.db}`")
    docker_client.volumes.get(volume).remove(force=True)
    proc = cli(env, "restore", second, "--from", "dr", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())


def test_the_scheduled_verify_finds_a_damaged_pooled_part_and_the_next_copy_resends_it(
    stack, sftp_server, worker_factory, docker_client, helper_image, monkeypatch
):
    from workers import config
    from workers.offsite import settings as offsite_settings
    from workers.offsite.verify import verify_remotes
    from workers.ops import inuse

    st, env = stack
    hook = Receiver()
    env = {**env, **FAST_RETRY, "XIEHE_OFFSITE": f"dr={sftp_server.url()}"}
    worker_factory(env)
    scan = "head -c 300000 /dev/urandom > /v/scan.dcm"  # a part of its own, linked next time
    _in_volume(docker_client, helper_image, st.volume_names[0], scan)
    first = _backup(env)
    # Bit rot on the remote: the scan's part keeps its size and time, not its bytes.
    pooled = _pooled(_remote_manifest(env, "dr", first))
    victim_rel = max(pooled, key=lambda rel: (sftp_server.root / rel).stat().st_size)
    victim = sftp_server.root / victim_rel
    info, good = victim.stat(), victim.read_bytes()
    victim.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))

    monkeypatch.setenv("XIEHE_NOTIFY_URLS", hook.url)  # the alert goes from this process
    settings = config.load(env)
    outcome = verify_remotes(settings, offsite_settings.load(env), inuse.broker(settings))
    assert not outcome["dr"]["ok"] and outcome["dr"]["damaged"] == [victim_rel]
    [alert] = hook.bodies
    assert f"offsite.verify_failed {first}" in alert["title"] and victim_rel in alert["message"]
    assert victim_rel not in _local_manifest(env, first)["pooled_md5"]

    # The next copy names the same part: the remote hashes it, and it is sent again.
    second = _backup(env)
    assert victim_rel in _pooled(_remote_manifest(env, "dr", second))
    assert victim.read_bytes() == good
    assert verify_remotes(settings, offsite_settings.load(env), inuse.broker(settings))["dr"]["ok"]
    proc = cli(env, "verify", "--remote", "dr", first)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # healed for the first copy too
    hook.server.shutdown()


def test_s3_copies_follow_retention_and_restore_alone(stack, s3_server, worker_factory, tmp_path):
    st, env = stack
    secret_file = tmp_path / "s3_secret"
    secret_file.write_text(S3Server.SECRET_KEY + "\n")
    env = {
        **env,
        **FAST_RETRY,
        "XIEHE_OFFSITE": f"oss={s3_server.url('xiehe-dr', 'hospital/prod')}",
        "XIEHE_OFFSITE_OSS_ACCESS_KEY_ID": S3Server.ACCESS_KEY,
        "XIEHE_OFFSITE_OSS_SECRET_ACCESS_KEY_FILE": str(secret_file),
        "XIEHE_KEEP_LAST": "2",
        "XIEHE_KEEP_DAILY": "0",
        "XIEHE_KEEP_WEEKLY": "0",
        "XIEHE_KEEP_MONTHLY": "0",
    }
    worker = worker_factory(env)
    before = st.snapshot()
    ids = [_backup(env) for _ in range(3)]

    listed = json.loads(cli(env, "list", "--remote", "oss", "--json").stdout)
    assert [r["id"] for r in listed] == ids[1:]  # the remote's own retention: last 2
    for backup_id in ids[1:]:
        proc = cli(env, "verify", "--remote", "oss", backup_id)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli(env, "verify", "--remote", "oss", ids[0])
    assert proc.returncode == 1 and "not on remote oss" in proc.stderr

    # The secret is in no log, no file of the tree, no journal.
    assert S3Server.SECRET_KEY not in worker.logfile.read_text()
    for path in Path(env["XIEHE_BACKUP_DIR"]).rglob("*"):
        if path.is_file():
            assert S3Server.SECRET_KEY.encode() not in path.read_bytes(), path

    # A new host: nothing local; Redis comes back from the object store alone.
    shutil.rmtree(env["XIEHE_BACKUP_DIR"])
    redis_py.Redis.from_url(st.redis_url).flushall()
    proc = cli(env, "restore", ids[-1], "--from", "oss", "--only", "redis", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())


def _transport(server: SftpServer):
    from workers.offsite import settings as offsite_settings
    from workers.offsite.rclone import Rclone

    offsite = offsite_settings.load({"XIEHE_OFFSITE": f"dr={server.url()}", **FAST_RETRY})
    return Rclone(offsite.remotes[0], offsite)


def _plant(server: SftpServer, rel: str, data: bytes) -> None:
    """A file on the remote as if the SFTP user had written it."""
    user = pwd.getpwnam(SFTP_USER)
    path = server.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    for made in (path.parent, path):
        os.chown(made, user.pw_uid, user.pw_gid)


def test_a_hostile_or_damaged_remote_copy_replaces_nothing(sftp_server, tmp_path):
    from workers.errors import BackupError, UnsafeArchive
    from workers.offsite.fetch import fetch
    from workers.store.layout import Tree

    tree = Tree(tmp_path / "backups")
    tree.ensure()
    good = b"the good local copy"
    (tree.root / "redis" / "dump_20260101_000000.rdb").write_bytes(good)
    payload = b"REDIS0011 tampered"
    artifact = {
        "path": "redis/dump_20260101_000000.rdb",
        "kind": "redis",
        "source": "redis",
        "sha256": hashlib.sha256(b"what the backup held").hexdigest(),
        "size_bytes": len(payload),
    }
    manifest = {"id": "20260101_000000", "status": "verified", "artifacts": [artifact]}
    _plant(sftp_server, artifact["path"], payload)
    _plant(sftp_server, "backup_info_20260101_000000.txt", b"info")
    _plant(sftp_server, "manifest_20260101_000000.json", json.dumps(manifest).encode())
    with pytest.raises(BackupError, match="damaged; nothing local was replaced"):
        fetch(tree, _transport(sftp_server), "20260101_000000")
    assert (tree.root / artifact["path"]).read_bytes() == good
    assert not tree.manifest("20260101_000000").exists()

    # A parted artifact whose pooled part holds other bytes than its list says.
    part_sha = hashlib.sha256(b"the part").hexdigest()
    listed = b"# header\n" + _parts_line(part_sha)
    hostile = _parted(manifest, listed, {catalog.pool_path(part_sha): ""})
    _plant(sftp_server, f"{hostile['artifacts'][0]['path']}/{parts.LIST_NAME}", listed)
    _plant(sftp_server, next(iter(hostile["md5"])), b"other bytes")
    _plant(sftp_server, "manifest_20260101_000000.json", json.dumps(hostile).encode())
    with pytest.raises(BackupError, match="damaged; nothing local was replaced"):
        fetch(tree, _transport(sftp_server), "20260101_000000")
    # A list naming its part by a path instead of a sha256.
    listed = b"# header\n" + _parts_line("../../escaped")
    hostile = _parted(manifest, listed, {})
    _plant(sftp_server, f"{hostile['artifacts'][0]['path']}/{parts.LIST_NAME}", listed)
    _plant(sftp_server, "manifest_20260101_000000.json", json.dumps(hostile).encode())
    with pytest.raises(BackupError, match="not a sha256"):
        fetch(tree, _transport(sftp_server), "20260101_000000")

    escape = tmp_path / "escaped"
    for path in ("../../escaped", str(escape), "redis/../../escaped"):
        hostile = {**manifest, "artifacts": [{**artifact, "path": path}]}
        _plant(sftp_server, "manifest_20260101_000000.json", json.dumps(hostile).encode())
        with pytest.raises(UnsafeArchive, match="unsafe path"):
            fetch(tree, _transport(sftp_server), "20260101_000000")
        assert not escape.exists()
    assert not tree.manifest("20260101_000000").exists()


def _parts_line(sha256: str) -> bytes:
    return f"00000000.zst\t11\t{sha256}\t512\t{'0' * 64}\t1\n".encode()


def _parted(manifest: dict, listed: bytes, pooled: dict[str, str]) -> dict:
    """The manifest with one parted volume artifact (list `listed`) naming `pooled`."""
    path = "volumes/uploads_20260101_000000.tar.zst.parts"
    artifact = {
        "path": path,
        "kind": "volume",
        "source": "uploads",
        "parts": 1,
        "sha256": hashlib.sha256(listed).hexdigest(),
        "size_bytes": 11 + len(listed),
    }
    md5 = {**pooled, f"{path}/{parts.LIST_NAME}": "", "backup_info_20260101_000000.txt": ""}
    return {**manifest, "artifacts": [artifact], "md5": md5}


def _plant_backup(server: SftpServer, backup_id: str, status: str) -> list[str]:
    rel = f"redis/dump_{backup_id}.rdb.zst"
    _plant(server, rel, b"rdb of " + backup_id.encode())
    _plant(server, f"backup_info_{backup_id}.txt", b"info")
    at = f"{backup_id[:4]}-{backup_id[4:6]}-{backup_id[6:8]}T{backup_id[9:11]}:00:00+08:00"
    manifest = {
        "id": backup_id,
        "status": status,
        "created_at": at,
        "artifacts": [{"path": rel, "size_bytes": 1, "sha256": "0"}],
    }
    _plant(server, f"manifest_{backup_id}.json", json.dumps(manifest).encode())
    return [rel, f"backup_info_{backup_id}.txt", f"manifest_{backup_id}.json"]


def test_remote_retention_reads_the_remote_and_keeps_its_newest_verified_copy(sftp_server):
    from workers.offsite.prune import prune_remote
    from workers.policy.retention import Policy

    ids = ["20260101_020000", "20260102_020000", "20260103_020000", "20260104_020000"]
    statuses = ["verified", "verified", "verified", "failed-verification"]
    files = {i: _plant_backup(sftp_server, i, s) for i, s in zip(ids, statuses, strict=True)}
    # A deletion cut short left a file behind; an upload cut short awaits its next run.
    _plant(sftp_server, "volumes/uploads_20251231_020000.tar.zst", b"orphan")
    _plant(sftp_server, "volumes/uploads_20260105_020000.tar.zst", b"partial")
    nothing = Policy(last=0, daily=0, weekly=0, monthly=0)
    transport = _transport(sftp_server)
    sendable = frozenset({"20260105_020000"})

    dry = prune_remote(transport, nothing, dry_run=True, sendable=sendable)
    assert dry["deleted"] == [] and all((sftp_server.root / f).exists() for f in files[ids[0]])
    assert dry["orphans"] == ["volumes/uploads_20251231_020000.tar.zst"]
    assert (sftp_server.root / dry["orphans"][0]).exists()
    result = prune_remote(transport, nothing, sendable=sendable)
    assert result["deleted"] == [ids[0], ids[1], ids[3]]
    assert not (sftp_server.root / "volumes/uploads_20251231_020000.tar.zst").exists()
    assert (sftp_server.root / "volumes/uploads_20260105_020000.tar.zst").exists()
    for backup_id, rels in files.items():
        kept = backup_id == ids[2]  # the newest verified, whatever the policy says
        assert all((sftp_server.root / rel).exists() == kept for rel in rels), backup_id


def test_encrypted_backups_leave_the_host_encrypted_and_come_back_with_the_key(
    stack, s3_server, worker_factory, mysql_conn, tmp_path
):
    import pyrage

    from workers.offsite import settings as offsite_settings
    from workers.offsite.rclone import Rclone

    st, env = stack
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o600)
    env = {
        **env,
        **FAST_RETRY,
        "XIEHE_AGE_RECIPIENTS": str(identity.to_public()),
        "XIEHE_OFFSITE": f"oss={s3_server.url('xiehe-sealed', 'prod')}",
        "XIEHE_OFFSITE_OSS_ACCESS_KEY_ID": S3Server.ACCESS_KEY,
        "XIEHE_OFFSITE_OSS_SECRET_ACCESS_KEY": S3Server.SECRET_KEY,
    }
    worker = worker_factory(env)  # holds no private key
    before = st.snapshot()
    backup_id = _backup(env)

    offsite = offsite_settings.load(env)
    transport = Rclone(offsite.remotes[0], offsite)
    for artifact in _local_manifest(env, backup_id)["artifacts"]:
        remote_bytes = transport.read(artifact["path"])
        assert hashlib.sha256(remote_bytes).hexdigest() == artifact["sha256"]
        if artifact["kind"] != "mysql-index":
            assert remote_bytes.startswith(b"age-encryption.org/v1")
            assert "患者".encode() not in remote_bytes and b"session:1" not in remote_bytes

    shutil.rmtree(env["XIEHE_BACKUP_DIR"])
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{st.db}`")
    worker.stop()
    restore_env = {**env, "XIEHE_AGE_IDENTITY_FILE": str(key_file)}
    worker_factory(restore_env)
    proc = cli(restore_env, "restore", backup_id, "--from", "oss", "--only", "mysql", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert_same(before, st.snapshot())


def test_replicate_by_hand_after_an_outage(stack, sftp_server, worker_factory):
    st, env = stack
    env = {**env, **FAST_RETRY, "XIEHE_OFFSITE": f"dr={sftp_server.url()}"}
    worker_factory(env)
    sftp_server.kill()  # the link is down during the nightly backup
    backup_id = _backup(env)
    assert _local_manifest(env, backup_id)["offsite"]["dr"]["status"] == "local-only"
    proc = cli(env, "replicate")
    assert proc.returncode == 1 and "dr: local-only" in proc.stdout
    assert not _doctor_check(env, "off-site dr")["ok"]

    sftp_server.start()  # back: send what is missing now, without waiting for a backup
    proc = cli(env, "replicate", "--remote", "dr")
    assert proc.returncode == 0 and f"sent {backup_id}" in proc.stdout, proc.stdout + proc.stderr
    assert _local_manifest(env, backup_id)["offsite"]["dr"]["status"] == "replicated"
    assert cli(env, "verify", "--remote", "dr", backup_id).returncode == 0
    again = cli(env, "replicate")
    assert again.returncode == 0 and "nothing missing" in again.stdout
    check = _doctor_check(env, "off-site dr")
    assert check["ok"] and not check["warn"] and f"newest {backup_id}" in check["detail"]


def _doctor_check(env, name: str) -> dict:
    checks = json.loads(cli(env, "doctor", "--json").stdout)
    return next(c for c in checks if c["name"] == name)
