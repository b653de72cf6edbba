"""Restoring a volume in place never leaves it, and lands every member as archived.

A planted symlink is removed by the wipe, not followed; a directory swapped for a symlink
mid-restore makes the restore fail, it does not write through the link; owners, modes,
xattrs, mtimes, hard and symbolic links come back, and a later member of the same name
wins (tar's rule).  No engine is needed: any directory stands in for a mountpoint.
Owners are restored as archived, which needs root (as the in-place restore itself does).
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from workers.errors import UnsafeArchive
from workers.targets.tar_safety import SafetyFilter
from workers.targets.volumes import unpacker

if os.geteuid() != 0:
    reason = "an in-place restore restores owners, which needs root (it runs as root in CI)"
    print(reason)
    pytestmark = pytest.mark.skip(reason=reason)


MTIME, EARLIER = 1_600_000_000, 1_500_000_000


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.mtime = 0o644, 0, 0, MTIME
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _unpack(root, members) -> None:
    with tarfile.open(fileobj=_tar(members), mode="r|") as tar:
        unpacker.unpack(root, tar, SafetyFilter(), None)


def test_the_wipe_removes_planted_symlinks_without_following_them(tmp_path):
    root, outside = tmp_path / "volume", tmp_path / "outside"
    (root / "study").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.dcm").write_bytes(b"host file")
    os.symlink(outside, root / "escape")
    os.symlink(outside, root / "study" / "inner")
    (root / ".env").write_bytes(b"TOKEN=x")
    unpacker.wipe(root)
    assert os.listdir(root) == []
    assert (outside / "keep.dcm").read_bytes() == b"host file"


def test_members_land_as_archived_and_the_later_of_two_names_wins(tmp_path):
    root = tmp_path / "volume"
    root.mkdir()
    xattr = {"SCHILY.xattr.user.origin": "scanner-1"}
    _unpack(
        root,
        [
            (_member(".", tarfile.DIRTYPE, mode=0o711, uid=0, gid=0), None),
            (_member("a", tarfile.DIRTYPE, mode=0o700, uid=999, gid=999), None),
            (_member("a/x.dcm", uid=1000, gid=1000), b"first"),
            (_member("a/x.dcm", mode=0o640, uid=1000, gid=1000, pax_headers=xattr), b"second"),
            (_member("a", tarfile.DIRTYPE, mode=0o750, uid=999, gid=999, mtime=EARLIER), None),
            (_member("a/y.dcm", tarfile.LNKTYPE, linkname="a/x.dcm"), None),
            (_member("latest", tarfile.SYMTYPE, linkname="a", uid=1000, gid=1000), None),
            (_member("implied/deep/f.txt"), b"parents not listed"),
            (_member("gone", tarfile.DIRTYPE), None),
            (_member("gone/sub", tarfile.DIRTYPE), None),
            (_member("gone"), b"a file now"),  # replaces the directory and what it held
        ],
    )
    assert (root / "gone").read_bytes() == b"a file now"
    a, x = os.stat(root / "a"), os.stat(root / "a" / "x.dcm")
    assert (a.st_mode & 0o7777, a.st_uid, a.st_gid, a.st_mtime) == (0o750, 999, 999, EARLIER)
    assert (root / "a" / "x.dcm").read_bytes() == b"second"
    assert (x.st_mode & 0o7777, x.st_uid, x.st_gid, x.st_mtime) == (0o640, 1000, 1000, MTIME)
    assert os.getxattr(root / "a" / "x.dcm", "user.origin") == b"scanner-1"
    assert os.stat(root / "a" / "y.dcm").st_ino == x.st_ino
    link = os.lstat(root / "latest")
    assert os.readlink(root / "latest") == "a" and (link.st_uid, link.st_gid) == (1000, 1000)
    assert (root / "implied" / "deep" / "f.txt").read_bytes() == b"parents not listed"
    assert os.stat(root).st_mode & 0o7777 == 0o711


def test_an_archive_that_comes_back_into_a_directory_it_left_keeps_its_mtime(tmp_path):
    """Not walk order (a tar made by hand): `a` is left for `b`, then written into again."""
    root = tmp_path / "volume"
    root.mkdir()
    _unpack(
        root,
        [
            (_member("a", tarfile.DIRTYPE, mtime=EARLIER), None),
            (_member("b", tarfile.DIRTYPE), None),
            (_member("a/late.txt"), b"late"),
            (_member("a/later", tarfile.DIRTYPE), None),
        ],
    )
    assert os.stat(root / "a").st_mtime == EARLIER
    assert (root / "a" / "late.txt").read_bytes() == b"late"
    assert os.stat(root / "a" / "later").st_mtime == MTIME


def test_a_directory_swapped_for_a_symlink_mid_restore_is_not_written_through(tmp_path):
    root, outside = tmp_path / "volume", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    unpack = unpacker.Unpacker(root)
    try:
        unpack.add(_member("study", tarfile.DIRTYPE), "study", None)
        os.rmdir(root / "study")  # a process racing the restore
        os.symlink(outside, root / "study")
        with pytest.raises(OSError):
            unpack.add(_member("study/x.dcm", size=5), "study/x.dcm", io.BytesIO(b"image"))
    finally:
        unpack.close()
    assert os.listdir(outside) == []


def test_an_unsafe_member_is_refused_before_it_is_written(tmp_path):
    root = tmp_path / "volume"
    root.mkdir()
    with pytest.raises(UnsafeArchive, match="points outside the volume"):
        _unpack(
            root,
            [
                (_member("ok.txt"), b"fine"),
                (_member("escape", tarfile.SYMTYPE, linkname="../outside"), None),
            ],
        )
    assert os.listdir(root) == ["ok.txt"]
