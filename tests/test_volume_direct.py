"""Reading a volume in place never leaves it: a directory swapped for a symlink between the
listing and the read (a container racing the backup) makes the read fail, it does not
follow the link.  No engine is needed: any directory stands in for a mountpoint."""

from __future__ import annotations

import os

import pytest

from workers.targets.volumes import direct as volume_direct
from workers.targets.volumes import index as vi


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path):
    root, outside = tmp_path / "volume", tmp_path / "outside"
    (root / "study").mkdir(parents=True)
    (root / "study" / "image.dcm").write_bytes(b"patient image")
    outside.mkdir()
    (outside / "image.dcm").write_bytes(b"host secret!!")  # same size: only the path differs

    listing = volume_direct.list_volume(root, tmp_path / "listing")
    steps = {s.item.path: s for s in vi.plan(listing, [])}
    assert steps["study/image.dcm"].fetch and steps["study/image.dcm"].item.size == 13

    (root / "study" / "image.dcm").unlink()
    (root / "study").rmdir()
    os.symlink(outside, root / "study")
    fetcher = volume_direct.DirectFetcher(root)
    try:
        # O_NOFOLLOW|O_DIRECTORY on the directory component: ENOTDIR, never the host's file
        with pytest.raises(vi.Stale, match="Not a directory"):
            fetcher.get(steps["study/image.dcm"])
    finally:
        fetcher.close()


def test_a_file_replaced_after_the_listing_is_refused(tmp_path):
    root = tmp_path / "volume"
    root.mkdir()
    (root / "a.dcm").write_bytes(b"first")
    listing = volume_direct.list_volume(root, tmp_path / "listing")
    step = next(s for s in vi.plan(listing, []) if s.item.path == "a.dcm")
    (root / "a.dcm").unlink()
    (root / "a.dcm").write_bytes(b"other")  # a new inode under the same name
    fetcher = volume_direct.DirectFetcher(root)
    try:
        with pytest.raises(vi.Stale):
            fetcher.get(step)
    finally:
        fetcher.close()


def test_the_walk_is_in_the_engines_order_and_keeps_odd_names(tmp_path):
    root = tmp_path / "volume"
    (root / "a").mkdir(parents=True)
    for name in ("a.x", "a/b", "two\nlines", "b"):
        (root / name).write_bytes(b"x")
    os.symlink("a/b", root / "link")
    (root / os.fsdecode(b"latin1-\xe9")).write_bytes(b"y")  # not UTF-8
    listing = volume_direct.list_volume(root, tmp_path / "listing")
    paths = [item.path for item in listing]  # iterating checks the order and the count
    assert paths == [".", "a", "a/b", "a.x", "b", os.fsdecode(b"latin1-\xe9"), "link", "two\nlines"]
    assert next(i for i in listing if i.path == "link").target == "a/b"
