"""Backup end to end: CLI -> queue -> real worker -> the seed plan's tree, loaded by hand.

After a backup, every artifact is loaded by hand with the standard tools (zstd, mariadb,
redis-server, tar) into scratch targets and compared with the source.
"""

from __future__ import annotations

import json
import stat
import subprocess
import tarfile
import threading
import time

import pytest

from tests.support.cli import cli, last_line
from tests.support.servers import RedisServer
from tests.support.stack import assert_same
from tests.support.webhook import Receiver
from workers.store.layout import is_backup_id
from workers.targets import mysql, redis


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_backup_round_trip_by_hand(stack, worker_factory, tmp_path, mysql_conn):
    st, env = stack
    worker_factory(env)
    before = st.snapshot()
    proc = cli(env, "backup", "--reason", "test")
    assert proc.returncode == 0, proc.stderr
    backup_id = last_line(proc)
    assert is_backup_id(backup_id)
    root = tmp_path / "backups"
    dump = root / "mysql" / f"{st.db}_{backup_id}.sql.zst"
    rdb = root / "redis" / f"dump_{backup_id}.rdb.zst"
    tar = root / "volumes" / f"{st.volume_names[0]}_{backup_id}.tar.zst.parts"
    info = root / f"backup_info_{backup_id}.txt"
    index = root / "mysql" / f"full_backup_{backup_id}.list"
    files = [dump, rdb, info, index, root / f"manifest_{backup_id}.json", *tar.iterdir()]
    for path in files:
        assert path.exists(), path
        assert _mode(path) == 0o600, path
    for sub in ("", "mysql", "redis", "volumes", tar.relative_to(root)):
        assert _mode(root / sub) == 0o700
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [(b["id"], b["status"], b["kinds"]) for b in listed] == [
        (backup_id, "verified", ["mysql", "redis", "volumes"])
    ]
    manifest = json.loads((root / f"manifest_{backup_id}.json").read_text())
    assert manifest["mysql"]["databases"][st.db]["tables"] == before["tables"]
    assert "durations" in json.dumps(manifest) or manifest["steps"]

    # MySQL by hand: drop the source, load the dump with the mariadb client.
    with mysql_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{st.db}`")
    subprocess.run(f"zstd -dc '{dump}' | mariadb -uroot -h127.0.0.1", shell=True, check=True)
    assert mysql.checksums(st.mysql, st.db) == before["tables"]
    assert mysql.objects(st.mysql, st.db) == before["objects"]

    # Redis by hand: a scratch redis-server started on the decompressed RDB.
    scratch = tmp_path / "scratch-redis"
    scratch.mkdir()
    subprocess.run(["zstd", "-dq", str(rdb), "-o", str(scratch / "dump.rdb")], check=True)
    server = RedisServer(scratch, "--dbfilename", "dump.rdb")
    try:
        restored = {"keys": redis.dump_keys(server.url), "keys_at": time.time()}
    finally:
        server.stop()
    assert_same({"keys": before["keys"], "keys_at": before["keys_at"]}, restored)

    # Volume by hand: cat parts | zstd | tar, every file's content, mode, owner, link target.
    out = tmp_path / "scratch-volume"
    out.mkdir()
    unpack = f"cat '{tar}'/*.zst | zstd -dc | tar -x --numeric-owner -C '{out}'"
    subprocess.run(unpack, shell=True, check=True)
    inventory = before[f"volume:{st.volume_names[0]}"]
    for path, entry in inventory.items():
        target = out / path
        assert target.exists() or target.is_symlink(), path
        assert stat.S_IMODE(target.lstat().st_mode) == entry["mode"] or entry["type"] == "symlink"
        assert target.lstat().st_uid == entry["uid"], path
    unzstd = subprocess.Popen(f"cat '{tar}'/*.zst | zstd -dc", shell=True, stdout=subprocess.PIPE)
    with tarfile.open(fileobj=unzstd.stdout, mode="r|") as t:
        names = {m.name.removeprefix("./") for m in t}
    unzstd.wait()
    assert "dicom/影像 报告.dcm" in names


def test_bad_inputs_fail_clearly_and_leave_nothing(stack, worker_factory, tmp_path):
    st, env = stack
    root = tmp_path / "backups"
    first = worker_factory(env)
    ok = cli(env, "backup", "--only", "redis")
    assert ok.returncode == 0, ok.stderr
    good_id = last_line(ok)
    first.stop()  # each case below gets the only worker, with the case's configuration
    cases = {
        "mysql": {"XIEHE_MYSQL_PORT": "1"},
        "nobody_xx": {"XIEHE_MYSQL_USER": "nobody_xx"},  # access denied, naming the user
        "does not exist": {"XIEHE_VOLUMES": "no_such_volume_xiehe"},
        "XIEHE_DISK_RESERVE_MB": {"XIEHE_DISK_RESERVE_MB": str(10**9)},
    }
    for expected, change in cases.items():
        worker = worker_factory({**env, **change})
        proc = cli({**env, **change}, "backup")
        worker.stop()
        assert proc.returncode == 1, (expected, proc.stderr)
        assert expected in proc.stderr, (expected, proc.stderr)
        assert not list((root / ".staging").iterdir())
        assert sorted(p.name for p in root.glob("manifest_*.json")) == [f"manifest_{good_id}.json"]
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [b["id"] for b in listed] == [good_id]


def test_a_volume_emptied_since_the_last_backup_is_a_warning_not_a_quiet_success(
    stack, worker_factory, tmp_path
):
    st, env = stack
    hook = Receiver()
    env = {**env, "XIEHE_NOTIFY_URLS": hook.url}  # success itself is not notified
    try:
        worker_factory(env)
        first = cli(env, "backup", "--only", "volumes")
        assert first.returncode == 0 and "WARNING" not in first.stderr, first.stderr
        name = st.volume_names[0]
        empty = ["sh", "-c", "rm -rf /v/* /v/.[!.]*"]  # a NAS share that did not mount, say
        st.docker.containers.run(
            st.helper_image, empty, volumes={name: {"bind": "/v"}}, remove=True
        )
        second = cli(env, "backup", "--only", "volumes")
        assert second.returncode == 0, second.stderr  # what is there is backed up, faithfully
        backup_id = last_line(second)
        assert f"WARNING: volume {name} holds no files; it held " in second.stderr
        root = tmp_path / "backups"
        manifest = json.loads((root / f"manifest_{backup_id}.json").read_text())
        assert manifest["volumes"][name]["files"] == 0 and len(manifest["warnings"]) == 1
        assert "WARNING:" in (root / f"backup_info_{backup_id}.txt").read_text()
        listed = cli(env, "list").stdout
        assert f"WARNING: volume {name} holds no files" in listed
        [event] = hook.bodies  # the first backup, a quiet success, sent nothing
        assert event["type"] == "warning" and f"backup.warning {backup_id}" in event["title"]
    finally:
        hook.server.shutdown()


def test_no_worker_is_reported_not_waited_for(stack):
    _, env = stack
    proc = cli(env, "backup", timeout=60)
    assert proc.returncode == 1
    assert "no xiehe-backup worker is running" in proc.stderr


def test_two_backups_of_one_target_never_interleave(stack, worker_factory, tmp_path):
    st, env = stack
    worker_factory({**env, "XIEHE_LOCK_WAIT": "0"}, concurrency=2)
    results = []

    def one():
        results.append(cli(env, "backup", "--only", "mysql"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.returncode in (0, 1) for p in results)
    assert any(p.returncode == 0 for p in results)
    for p in results:
        if p.returncode == 1:
            assert "locked by run" in p.stderr
    ids = [b["id"] for b in json.loads(cli(env, "list", "--json").stdout)]
    assert len(ids) == sum(p.returncode == 0 for p in results)
    spans = []
    for backup_id in ids:  # the runs that both succeeded held the target one after the other
        steps = json.loads((tmp_path / "backups" / ".runs" / f"{backup_id}.json").read_text())
        steps = steps["steps"]
        spans.append((steps["dump_mysql"]["started_at"], steps["publish"]["finished_at"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions(stack, worker_factory, tmp_path, compression):
    st, env = stack
    env = {**env, "XIEHE_COMPRESSION": compression}
    worker_factory(env)
    proc = cli(env, "backup", "--only", "mysql,redis")
    assert proc.returncode == 0, proc.stderr
    suffix = {"gzip": ".gz", "none": ""}[compression]
    backup_id = last_line(proc)
    assert (tmp_path / "backups" / "mysql" / f"{st.db}_{backup_id}.sql{suffix}").exists()
