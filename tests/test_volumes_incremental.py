"""Incremental volume backups: unchanged files' parts are hard-linked (small files' frames
copied), never read or compressed again, and every backup still restores alone (and by
hand) to exactly the volume's state.

Real Docker engine and busybox helper image, as in test_volumes_target.py (whose
fixtures are reused); skips, saying why, when the engine is unreachable.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import test_volumes_target as base
from tests.test_volumes_target import HELPER, as_files, disk_inventory, run_in
from workers.store import parts
from workers.store.codec import Codec
from workers.targets import tar_safety, volumes
from workers.targets.volumes import index as volume_index

engine, new_volume = base.engine, base.new_volume  # the engine and volume fixtures
MB = 1 << 20
NOTES = {n: f"note {n}" for n in ("keep", "rename", "chmod", "touch")}
BIG_FILES = 20  # of 4 MB: the volume is large enough that reading few files beats a full read
FILL = f"""
set -e
cd /target
mkdir -p 'dicom/影像 2024' 'empty dir' notes
for i in $(seq 1 {BIG_FILES}); do
    head -c {4 * MB} /dev/urandom > "dicom/影像 2024/IM$i.dcm"
done
for n in keep rename chmod touch; do printf "note $n" > "notes/$n.txt"; done
printf '' > notes/empty
ln -s 'dicom/影像 2024' latest
ln 'dicom/影像 2024/IM5.dcm' IM5-hardlink
chown 1000:1000 'dicom/影像 2024/IM3.dcm' notes
"""
CHANGE = """
set -e
cd /target
head -c 4194304 /dev/urandom > 'dicom/影像 2024/IM1.dcm'
rm 'dicom/影像 2024/IM2.dcm'
mv notes/rename.txt notes/renamed.txt
chmod 600 notes/chmod.txt
touch -d '2020-01-02 03:04:05' notes/touch.txt
mkdir -p 'dicom/new study/s1'
printf 'new image' > 'dicom/new study/s1/a.dcm'
printf 'another' > 'dicom/new study/s1/b.dcm'
ln -sfn notes latest
"""


def settle() -> None:
    """Changes within a second of a listing are not trusted by the next backup: let them age."""
    time.sleep(volume_index.RACY_S + 1.1)


@pytest.fixture(params=["in place", "engine"])
def backup(request):
    """archive() reading the volume in place (from its mountpoint), or through the engine."""
    direct = request.param == "in place"

    def run(engine, name, out, backup_id, previous=None) -> tuple[dict, os.PathLike]:
        result = volumes.archive(
            engine, name, HELPER, out, backup_id, Codec(), previous=previous, direct=direct
        )
        assert result.get("read") == ("in place" if direct else None)
        return result, out / result["artifacts"][0]["file"]

    run.direct = direct
    return run


def by_hand(artifact, into) -> dict:
    """`cat *.zst | zstd -dc | tar x`, as a human would, then the tree's inventory."""
    into.mkdir()
    subprocess.run(
        f"cat '{artifact}'/*.zst | zstd -dc | tar -xpf - --numeric-owner -C '{into}'",
        shell=True,
        check=True,
    )
    return disk_inventory(into)


def test_second_backup_links_unchanged_files_and_restores_alone(
    engine, new_volume, tmp_path, backup
):
    name = new_volume()
    run_in(engine, name, FILL)
    settle()
    first, first_artifact = backup(engine, name, tmp_path / "b1", "b1")
    assert first["reused_files"] == 0 and first["read_bytes"] == BIG_FILES * 4 * MB + sum(
        map(len, NOTES.values())
    )

    run_in(engine, name, CHANGE)
    settle()
    state = volumes.file_inventory(engine, name, HELPER)
    second, artifact = backup(engine, name, tmp_path / "b2", "b2", previous=first_artifact)

    # Unchanged: 18 big files (IM1 rewritten, IM2 gone) and notes/keep.txt; read again: IM1,
    # the renamed, chmod-ed and touched notes, and the new directory (one engine call).
    assert second["reused_files"] == BIG_FILES - 2 + 1
    # One big file's frame is copied, not linked: the root directory (`latest` replaced)
    # changed, and its header opens the part of the first big file after it (IM5-hardlink,
    # which carries IM5's data). The note is small: its frame is copied too.
    assert second["linked_files"] == BIG_FILES - 3
    assert second["reused_bytes"] == (BIG_FILES - 2) * 4 * MB + len("note keep")
    linked = [p for p in artifact.iterdir() if p.stat().st_nlink == 2]
    assert len(linked) == BIG_FILES - 3 and all(p.stat().st_size > 4 * MB * 0.99 for p in linked)
    notes = NOTES["rename"] + NOTES["chmod"] + NOTES["touch"]
    assert second["read_bytes"] == 4 * MB + len(notes) + len("new image" + "another")
    assert second["engine_calls"] == (0 if backup.direct else 5) and second["note"] is None
    assert second["manifest_sha256"] == volumes.manifest_sha256(state)
    full, _ = backup(engine, name, tmp_path / "full", "full")  # the same state, read in full
    assert full["manifest_sha256"] == second["manifest_sha256"]
    assert {k: full[k] for k in tar_safety.COUNTS} == {k: second[k] for k in tar_safety.COUNTS}
    assert sorted(os.listdir(tmp_path / "b2")) == [artifact.name]  # nothing else left behind

    first_size = first["artifacts"][0]["size_bytes"]
    freed = parts.remove(first_artifact)  # the second backup owes nothing to the first
    assert 0 < freed < first_size - (BIG_FILES - 3) * 4 * MB  # linked parts stay on disk
    hand = by_hand(artifact, tmp_path / "hand")
    assert hand.pop(".")["mode"] == state["."]["mode"]
    assert hand == {k: v for k, v in as_files(state).items() if k != "."}
    target = new_volume(create=False)
    volumes.restore(engine, target, artifact, HELPER)
    assert volumes.file_inventory(engine, target, HELPER) == state

    # A third backup with nothing changed reads nothing.
    third, _ = backup(engine, name, tmp_path / "b3", "b3", previous=artifact)
    assert third["read_bytes"] == 0 and third["engine_calls"] == 0
    assert third["linked_files"] == BIG_FILES - 1
    assert third["manifest_sha256"] == second["manifest_sha256"]


def test_damaged_previous_artifact_is_not_propagated(engine, new_volume, tmp_path, backup):
    name = new_volume()
    run_in(engine, name, FILL)
    settle()
    _, first_artifact = backup(engine, name, tmp_path / "b1", "b1")
    last = sorted(first_artifact.glob("*.zst"))[-1]
    fd = os.open(last, os.O_RDONLY)
    records = list(volume_index.read_index(fd))
    os.close(fd)
    part, offset, length, own, _ = next(r[3] for r in records if r[0].endswith("/IM7.dcm"))
    assert own
    with open(first_artifact / part, "r+b") as fh:  # one flipped byte inside IM7's data frame
        fh.seek(offset + length // 2)
        byte = fh.read(1)
        fh.seek(offset + length // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))

    state = volumes.file_inventory(engine, name, HELPER)
    second, artifact = backup(engine, name, tmp_path / "b2", "b2", previous=first_artifact)
    assert "not reused" in second["note"] and second["reused_files"] == 0
    assert all(p.stat().st_nlink == 1 for p in artifact.iterdir())
    assert second["manifest_sha256"] == volumes.manifest_sha256(state)
    target = new_volume(create=False)
    volumes.restore(engine, target, artifact, HELPER)
    assert volumes.file_inventory(engine, target, HELPER) == state


def test_odd_names_are_archived_whole_or_walked(engine, new_volume, tmp_path, backup):
    name = new_volume()
    script = "cd /target && printf x > \"$(printf 'two\\nlines')\" && printf y > z"
    script += " && printf w > \"$(printf 'latin1-\\351')\""  # not UTF-8: a surrogate in Python
    run_in(engine, name, script)
    settle()
    first, first_artifact = backup(engine, name, tmp_path / "b1", "b1")
    state = volumes.file_inventory(engine, name, HELPER)
    assert "two\nlines" in state and os.fsdecode(b"latin1-\xe9") in state
    second, artifact = backup(engine, name, tmp_path / "b2", "b2", previous=first_artifact)
    assert second["manifest_sha256"] == first["manifest_sha256"] == volumes.manifest_sha256(state)
    target = new_volume(create=False)
    volumes.restore(engine, target, artifact, HELPER)
    assert volumes.file_inventory(engine, target, HELPER) == state
    if backup.direct:  # a walk has no separators to trip on: nothing is read again
        assert first["note"] is None and second["reused_files"] == 3
    else:
        assert "not listed" in first["note"] and second["reused_files"] == 0


def test_previous_artifact_is_the_newest_verified_unencrypted_zstd_one(tmp_path):
    from workers.steps.archive_volumes import previous_artifact
    from workers.store import manifest
    from workers.store.layout import Tree

    tree = Tree(tmp_path)
    tree.ensure()

    def publish(backup_id: str, status: str = "verified", parted: bool = True, **artifact) -> str:
        file = f"uploads_{backup_id}.tar.zst" + (".parts" if parted else "")
        (tmp_path / "volumes" / file).mkdir()
        (tmp_path / "volumes" / file / "PARTS").write_bytes(b"x" * 10)
        record = {"kind": "volume", "source": "uploads", "path": f"volumes/{file}"}
        record |= {"compression": "zstd", "encrypted": False, "size_bytes": 10, **artifact}
        manifest.write(tree, {"id": backup_id, "status": status, "artifacts": [record]})
        return file

    assert previous_artifact(tree, "uploads") is None
    good = publish("20260101_000000")
    publish("20260102_000000", status="failed-verification")
    publish("20260103_000000", encrypted=True)
    publish("20260104_000000", parted=False)  # a single-file artifact of an older version
    publish("20260105_000000", size_bytes=11)  # truncated on disk
    assert previous_artifact(tree, "uploads") == tmp_path / "volumes" / good
    assert previous_artifact(tree, "other") is None


def test_types_swapped_and_links_into_new_dirs_match_a_full_archive(
    engine, new_volume, tmp_path, backup
):
    name = new_volume()
    run_in(engine, name, FILL + "printf f > was-file && mkdir was-dir && printf g > was-dir/g")
    settle()
    _, first_artifact = backup(engine, name, tmp_path / "b1", "b1")
    run_in(
        engine,
        name,
        """set -e; cd /target
        rm was-file && mkdir was-file && printf h > was-file/h
        rm -r was-dir && printf d > was-dir
        mkdir -p new/deep && ln 'dicom/影像 2024/IM9.dcm' new/deep/IM9-link
        ln -s ../notes new/notes-link && rm IM5-hardlink""",
    )
    settle()
    state = volumes.file_inventory(engine, name, HELPER)
    assert state["new/deep/IM9-link"]["type"] == "hardlink"
    second, artifact = backup(engine, name, tmp_path / "b2", "b2", previous=first_artifact)
    full, _ = backup(engine, name, tmp_path / "full", "full")
    # IM5 and IM9 changed link counts, hence ctime: read again; the others and 4 notes copied.
    assert second["reused_files"] == BIG_FILES - 2 + len(NOTES)
    assert second["manifest_sha256"] == full["manifest_sha256"] == volumes.manifest_sha256(state)
    target = new_volume(create=False)
    volumes.restore(engine, target, artifact, HELPER)
    assert volumes.file_inventory(engine, target, HELPER) == state
