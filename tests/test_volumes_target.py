"""Docker volumes: back up, destroy, restore, and compare every file; refuse unsafe archives.

Runs against the real engine with the busybox helper image (built on demand by
ops/images/build_helper_image.sh); skips, saying why, when the engine is unreachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pyrage
import pytest
from docker.errors import NotFound

from workers.errors import TargetError, UnsafeArchive
from workers.steps.verify_backup import verify_artifact
from workers.store.codec import Codec, CorruptArtifact, open_plain
from workers.targets import docker_engine, tar_safety, volumes

REPO = Path(__file__).resolve().parents[1]
HELPER = os.environ.get("XIEHE_HELPER_IMAGE", "xiehe/helper:busybox")
BIG = 20 * 1024 * 1024

FILL = f"""
set -e
cd /target
mkdir -p dicom/2024/01/study1 'empty dir' private
printf 'first image' > dicom/2024/01/study1/a.dcm
printf '报告内容' > 'dicom/影像 报告.dcm'
printf 'TOKEN=x' > .env
head -c {BIG} /dev/urandom > big.bin
printf x > m600 && chmod 600 m600
printf y > m755 && chmod 755 m755
printf z > m640 && chmod 640 m640
chmod 700 private
chown 1000:1000 m600 dicom 'dicom/影像 报告.dcm'
chown 999:999 m640 private
ln -s dicom/2024 rel-link
ln -s does-not-exist dangling
ln big.bin big-hardlink
touch -d '2001-02-03 04:05:06' m755 'empty dir'
"""


@pytest.fixture(scope="module")
def engine():
    try:
        client = docker_engine.client()
    except TargetError as exc:
        reason = f"Docker engine unreachable: {exc}"
        print(reason)
        pytest.skip(reason)
    subprocess.run(
        ["sh", str(REPO / "ops/images/build_helper_image.sh"), HELPER], check=True, timeout=300
    )
    return client


@pytest.fixture
def new_volume(engine):
    """Factory of uniquely named volumes, removed (with their users) after the test."""
    names: list[str] = []

    def make(create: bool = True) -> str:
        name = f"xiehe-test-{uuid.uuid4().hex[:10]}"
        names.append(name)
        if create:
            engine.volumes.create(name)
        return name

    yield make
    for name in names:
        for user in docker_engine.containers_using_volume(engine, name):
            engine.containers.get(user["id"]).remove(force=True)
        with contextlib.suppress(NotFound):  # a test may have removed it already
            engine.volumes.get(name).remove(force=True)


def run_in(engine, volume: str, script: str) -> None:
    engine.containers.run(
        HELPER, ["sh", "-c", script], volumes={volume: {"bind": "/target"}}, remove=True
    )


def disk_inventory(root: Path) -> dict[str, dict]:
    """What a hand extraction left on disk, in file_inventory()'s terms (hard links as files)."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        entry = {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}
        if path.is_symlink():
            entry.update(type="symlink", target=os.readlink(path))
        elif path.is_dir():
            entry["type"] = "dir"
        else:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            entry.update(type="file", size=st.st_size, sha256=sha)
        if rel != ".":
            entry["mtime"] = int(st.st_mtime)
        out[rel] = entry
    return out


def as_files(inventory: dict[str, dict]) -> dict[str, dict]:
    """Hard links replaced by the file they share an inode with."""
    return {
        path: inventory[e["target"]] if e["type"] == "hardlink" else e
        for path, e in inventory.items()
    }


@pytest.mark.parametrize("direct", [True, False], ids=["in place", "engine"])
def test_archive_unpacks_by_hand_and_restores_exactly(engine, new_volume, tmp_path, direct):
    name = new_volume()
    run_in(engine, name, FILL)
    before = volumes.file_inventory(engine, name, HELPER)
    assert before["dicom/影像 报告.dcm"]["uid"] == 1000
    links = {before[p]["type"] for p in ("big.bin", "big-hardlink")}
    assert links == {"file", "hardlink"}  # the engine walks names in order: the 1st is the file

    seen: list[int] = []
    out = tmp_path / "out"
    result = volumes.archive(engine, name, HELPER, out, "b1", Codec(), seen.append, direct=direct)
    assert result.get("read") == ("in place" if direct else None)
    [record] = result["artifacts"]
    artifact = tmp_path / "out" / record["file"]
    assert record["file"] == f"{name}_b1.tar.zst.parts" and record["kind"] == "volume"
    assert sorted(os.listdir(tmp_path / "out")) == [record["file"]]  # nothing else written
    assert oct(artifact.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in artifact.iterdir()} == {"0o600"}
    assert record["parts"] == len(list(artifact.glob("*.zst"))) > 1
    assert record["decoded_when_written"] is True  # no service waited: checked as written
    assert (result["files"], result["dirs"], result["symlinks"], result["hardlinks"]) == (
        7,
        6,
        2,
        1,
    )
    assert result["bytes"] == BIG + len("first image") + len("报告内容".encode()) + 7 + 3
    assert seen and seen[-1] == record["plain_bytes"]
    assert result["manifest_sha256"] == volumes.manifest_sha256(before)

    # By hand, with GNU tar: every name is relative and every file, owner, mode, link is there.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(  # the parts in name order are the tar.zst
        f"cat '{artifact}'/*.zst | tar --zstd -xpf - --numeric-owner -C '{unpacked}'",
        shell=True,
        check=True,
    )
    with tarfile.open(fileobj=open_plain(artifact), mode="r|") as tar:
        assert all(m.name == "." or m.name.startswith("./") for m in tar)
    by_hand = disk_inventory(unpacked)
    assert by_hand.pop(".")["mode"] == before["."]["mode"]
    assert by_hand == {k: v for k, v in as_files(before).items() if k != "."}
    assert (unpacked / "big.bin").stat().st_ino == (unpacked / "big-hardlink").stat().st_ino

    run_in(engine, name, 'rm -rf /target/* /target/.env && [ -z "$(ls -A /target)" ]')
    restored = volumes.restore(engine, name, artifact, HELPER, direct=direct)
    assert restored["written"] == ("in place" if direct else "through the engine")
    assert restored["created"] is False and restored["bytes"] == result["bytes"]
    after = volumes.file_inventory(engine, name, HELPER)
    assert after == before
    assert volumes.manifest_sha256(after) == result["manifest_sha256"]


def test_removed_volume_is_recreated_from_an_encrypted_artifact(engine, new_volume, tmp_path):
    name = new_volume()
    run_in(engine, name, FILL)
    before = volumes.file_inventory(engine, name, HELPER)
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    codec = Codec("gzip", recipients=(str(identity.to_public()),))
    result = volumes.archive(engine, name, HELPER, tmp_path, "b2", codec)
    artifact = tmp_path / result["artifacts"][0]["file"]
    assert artifact.name.endswith(".tar.gz.age")

    engine.volumes.get(name).remove()  # as after `docker compose down -v`
    labels = {"com.docker.compose.project": "xiehe", "com.docker.compose.volume": "data"}
    restored = volumes.restore(engine, name, artifact, HELPER, key_file, labels=labels)
    assert restored["created"] is True
    assert volumes.check(engine, name)["labels"] == labels
    assert volumes.file_inventory(engine, name, HELPER) == before


def test_a_volume_mounted_only_while_used_goes_through_the_engine(engine, new_volume, tmp_path):
    """A local volume with options (a bind of a host directory here; NFS, CIFS alike) is
    mounted at its Mountpoint only while a container uses it: read there, it was backed up
    as an empty volume, and a restore there would be hidden by the mount."""
    nas = tmp_path / "nas"
    (nas / "study").mkdir(parents=True)
    (nas / "study" / "a.dcm").write_bytes(b"patient image")
    name = new_volume(create=False)
    options = {"type": "none", "o": "bind", "device": str(nas)}
    engine.volumes.create(name, driver="local", driver_opts=options)
    assert not os.listdir(engine.volumes.get(name).attrs["Mountpoint"])  # the stand-in

    result = volumes.archive(engine, name, HELPER, tmp_path / "out", "b1", Codec())
    assert result.get("read") is None  # through the engine, which mounts it
    assert (result["files"], result["bytes"]) == (1, len(b"patient image"))
    shutil.rmtree(nas / "study")
    artifact = tmp_path / "out" / result["artifacts"][0]["file"]
    restored = volumes.restore(engine, name, artifact, HELPER)
    assert restored["written"] == "through the engine"
    assert (nas / "study" / "a.dcm").read_bytes() == b"patient image"
    assert "driver_options" in volumes.check(engine, name)
    assert str(nas) not in json.dumps(volumes.check(engine, name))  # options' values never


def _start_user(engine, volume: str):
    """A container using the volume that stops promptly on SIGTERM."""
    script = "trap 'exit 0' TERM; while true; do sleep 1; done"
    return engine.containers.run(
        HELPER, ["sh", "-c", script], volumes={volume: {"bind": "/data"}}, detach=True
    )


def test_volume_in_use_is_not_copied_live(engine, new_volume, tmp_path):
    name = new_volume()
    run_in(engine, name, "echo row > /target/ibdata")
    user = _start_user(engine, name)
    assert volumes.check(engine, name)["in_use_by"] == [user.name]

    with pytest.raises(TargetError, match=user.name):
        volumes.archive(engine, name, HELPER, tmp_path / "out", "b3", Codec())
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")

    # Stopped for the copy even when the copy fails (through the engine, with no helper
    # image), and running again afterwards.
    with pytest.raises(TargetError, match="helper image"):
        volumes.archive(
            engine, name, "xiehe/no-such-image:x", tmp_path, "b3", Codec(), None, True, direct=False
        )
    user.reload()
    assert user.status == "running"
    assert not engine.containers.list(all=True, filters={"label": f"xiehe.helper={name}"})

    result = volumes.archive(engine, name, HELPER, tmp_path, "b3", Codec(), stop_running=True)
    assert result["files"] == 1
    user.reload()
    assert user.status == "running"
    [record] = result["artifacts"]
    artifact = tmp_path / record["file"]
    # Its service waited for the copy: the parts were not decoded meanwhile, so the
    # backup's verify, once the service runs again, reads them back whole.
    assert "decoded_when_written" not in record
    checked = verify_artifact(artifact, record, None, just_written=True)
    assert checked["content"] == "ok" and checked["parts_read"] == record["parts"]
    with pytest.raises(TargetError, match=user.name):
        volumes.restore(engine, name, artifact, HELPER)
    volumes.restore(engine, name, artifact, HELPER, stop_running=True)
    user.reload()
    assert user.status == "running"


def test_stop_containers_only_restarts_those_it_stopped(engine, new_volume):
    name = new_volume()
    running = _start_user(engine, name)
    idle = engine.containers.create(HELPER, ["true"], volumes={name: {"bind": "/data"}})
    stopped = docker_engine.stop_containers(engine, [running.name, idle.name])
    assert stopped == [running.name]
    docker_engine.start_containers(engine, stopped)
    running.reload()
    idle.reload()
    assert (running.status, idle.status) == ("running", "created")
    with pytest.raises(TargetError, match="xiehe-no-such-container"):
        docker_engine.stop_containers(engine, [running.name, "xiehe-no-such-container"])
    running.reload()
    assert running.status == "running"  # nothing stopped when one name is wrong


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def _dir(name: str) -> tarfile.TarInfo:
    info = _member(name, tarfile.DIRTYPE)
    info.mode = 0o755
    return info


UNSAFE = {
    "dotdot": [(_member("../evil"), b"x")],
    "dotdot-inside": [(_member("./a/../../evil"), b"x")],
    "absolute": [(_member("/abs"), b"x")],
    "symlink-to-etc-then-through-it": [
        (_member("./etc", tarfile.SYMTYPE, "/etc"), b""),
        (_member("./etc/cron.d/evil"), b"* * * * * root sh"),
    ],
    "symlink-up-and-out": [(_member("./a/up", tarfile.SYMTYPE, "../../x"), b"")],
    "symlink-chain-out": [
        (_member("./t", tarfile.SYMTYPE, "a/s/.."), b""),
        (_dir("./a"), b""),
        (_member("./a/s", tarfile.SYMTYPE, ".."), b""),
    ],
    "through-inside-symlink": [
        (_dir("./d"), b""),
        (_member("./l", tarfile.SYMTYPE, "d"), b""),
        (_member("./l/f"), b"x"),
    ],
    "hardlink-to-passwd": [(_member("./pw", tarfile.LNKTYPE, "/etc/passwd"), b"")],
    "hardlink-not-yet-seen": [(_member("./pw", tarfile.LNKTYPE, "later"), b"")],
    "char-device": [(_member("./null", tarfile.CHRTYPE), b"")],
    "fifo": [(_member("./pipe", tarfile.FIFOTYPE), b"")],
    "oversize": [(_member("./a"), b"x" * 600), (_member("./b"), b"x" * 600)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_refused_before_the_volume_is_touched(case, engine, new_volume, tmp_path):
    artifact = tmp_path / "crafted.tar"
    artifact.write_bytes(_tar(*UNSAFE[case]))
    with pytest.raises(UnsafeArchive):
        tar_safety.scan(artifact, max_unpacked_bytes=1000)

    name = new_volume()
    run_in(engine, name, "echo keep > /target/patient.dcm")
    before = volumes.file_inventory(engine, name, HELPER)
    with pytest.raises(UnsafeArchive):
        volumes.restore(engine, name, artifact, HELPER, max_unpacked_bytes=1000)
    assert volumes.file_inventory(engine, name, HELPER) == before


def test_truncated_artifact_refused_before_the_volume_is_touched(engine, new_volume, tmp_path):
    name = new_volume()
    run_in(engine, name, f"head -c {BIG} /dev/urandom > /target/big.bin")
    result = volumes.archive(engine, name, HELPER, tmp_path, "b5", Codec())
    artifact = tmp_path / result["artifacts"][0]["file"]
    big_part = max(artifact.glob("*.zst"), key=lambda p: p.stat().st_size)
    with open(big_part, "r+b") as fh:
        fh.truncate(big_part.stat().st_size // 2)
    before = volumes.file_inventory(engine, name, HELPER)
    with pytest.raises(CorruptArtifact):
        volumes.restore(engine, name, artifact, HELPER)
    assert volumes.file_inventory(engine, name, HELPER) == before


def test_safe_crafted_archive_passes_scan(tmp_path):
    artifact = tmp_path / "ok.tar"
    artifact.write_bytes(
        _tar(
            (_dir("."), b""),
            (_dir("./a"), b""),
            (_member("./a/f"), b"data"),
            (_member("./a/up", tarfile.SYMTYPE, "../a/f"), b""),
            (_member("./g", tarfile.LNKTYPE, "./a/f"), b""),
        )
    )
    summary = tar_safety.scan(artifact, max_unpacked_bytes=4)
    assert (summary["files"], summary["dirs"], summary["symlinks"], summary["hardlinks"]) == (
        1,
        1,
        1,
        1,
    )
    assert summary["root"] == {"mode": 0o755, "uid": 0, "gid": 0}


def test_missing_volume_is_a_clear_error_and_is_not_created(engine, new_volume, tmp_path):
    name = new_volume(create=False)
    for call in (
        lambda: volumes.check(engine, name),
        lambda: volumes.archive(engine, name, HELPER, tmp_path, "b4", Codec()),
        lambda: volumes.file_inventory(engine, name, HELPER),
    ):
        with pytest.raises(TargetError, match=f"volume:{name}: does not exist"):
            call()
    assert not engine.volumes.list(filters={"name": name})


def test_unreachable_engine_names_the_cause():
    with pytest.raises(TargetError, match="Is dockerd running"):
        docker_engine.client("tcp://127.0.0.1:1")
