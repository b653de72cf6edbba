"""Space: a nearly full backup disk (a small tmpfs) is refused in preflight with nothing
written; `df` and `volumes` show the tree's and the volumes' usage, as a user reads them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli, last_line

MiB = 2**20


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs; requested before the worker so it is unmounted after it stops."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "xt_small", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({proc.stderr.strip()}): needs root, CAP_SYS_ADMIN")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_nearly_full_backup_disk_is_refused_with_nothing_written(
    small_disk, stack, worker_factory
):
    _, env = stack
    backups = small_disk / "backups"
    env = {**env, "XIEHE_BACKUP_DIR": str(backups), "XIEHE_DISK_RESERVE_MB": "8"}
    with open(small_disk / "filler", "wb") as out:  # leave 6 MiB: less than the reserve
        out.truncate(0)
        block = os.urandom(MiB)
        while shutil.disk_usage(small_disk).free > 6 * MiB:
            out.write(block)
            out.flush()
    worker_factory(env)
    before = files_under(small_disk)
    free_before = shutil.disk_usage(small_disk).free

    proc = cli(env, "backup", "--reason", "disk nearly full")

    assert proc.returncode == 1
    assert "failed in preflight" in proc.stderr and "XIEHE_DISK_RESERVE_MB" in proc.stderr
    backup_id = last_line(proc)
    written = files_under(small_disk) - before
    # the run's journal and the refreshed metrics textfile, no backup data
    assert written == {f"backups/.runs/{backup_id}.json", "backups/.metrics/xiehe_backup.prom"}
    assert not any((backups / ".staging").iterdir())
    assert free_before - shutil.disk_usage(small_disk).free < 64 * 1024
    listed = json.loads(cli(env, "list", "--json", "--all").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(backup_id, "failed")]


@pytest.fixture
def backed_up(stack, worker_factory):
    st, env = stack
    worker_factory(env)
    proc = cli(env, "backup", "--reason", "space")
    assert proc.returncode == 0, proc.stderr
    return st, env, last_line(proc)


def test_df_shows_the_tree_by_kind_and_the_volumes(backed_up, tmp_path):
    st, env, _ = backed_up
    report = json.loads(cli(env, "df", "--json").stdout)
    root = tmp_path / "backups"
    for kind, sub in (("mysql", "mysql"), ("redis", "redis"), ("volumes", "volumes")):
        expected = sum(p.stat().st_size for p in (root / sub).rglob("*") if p.is_file())
        assert report["tree"][kind] == expected > 0, kind
    assert report["disk"]["free"] > 0 and 0 < report["disk"]["percent"] < 100
    [volume] = report["volumes"]
    assert volume["name"] == st.volume_names[0] and volume["exists"]
    assert volume["size_bytes"] > 500_000  # the DICOM files the stack put there

    proc = cli({**env, "XIEHE_DF_WARN_PERCENT": "1"}, "df")
    assert proc.returncode == 0
    assert f"backup disk {root}:" in proc.stdout and st.volume_names[0] in proc.stdout
    assert "warning: the backup disk is" in proc.stderr and "xiehe-backup prune" in proc.stderr


def test_volumes_lists_size_mountpoint_and_users(stack, docker_client, helper_image):
    st, env = stack
    [name] = st.volume_names
    app = docker_client.containers.run(
        helper_image, ["sleep", "600"], detach=True, volumes={name: {"bind": "/data"}}
    )
    try:
        [row] = json.loads(cli(env, "volumes", "--json").stdout)
        assert row["name"] == name and row["exists"]
        assert row["mountpoint"] == docker_client.volumes.get(name).attrs["Mountpoint"]
        assert row["containers"] == [app.name] and row["size_bytes"] > 500_000
        text = cli(env, "volumes").stdout
        assert name in text and app.name in text
    finally:
        app.remove(force=True)
    missing = cli({**env, "XIEHE_VOLUMES": "xt_no_such_volume"}, "volumes")
    assert missing.returncode == 1 and "MISSING" in missing.stdout
