"""A volume's manifest digest is recorded in every backup and recomputed from a restored
volume (drill, restore check): the fast lines must be the JSON encoder's bytes exactly,
or every backup written before would fail its check."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.targets.volumes.inventory import manifest_line

ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode  # what made them
texts = st.text(st.sampled_from('ab/._-é影\udcff "\\\n\t\x00\u2028'), min_size=1, max_size=40)
ids = st.integers(0, 2**32)


@st.composite
def entries(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink"]))
    entry = {"mode": draw(st.integers(0, 0o7777)), "uid": draw(ids), "gid": draw(ids)}
    if draw(st.integers(0, 9)):  # the root has no mtime
        entry["mtime"] = draw(st.integers(0, 2**34))
    entry["type"] = kind
    if kind == "file":
        entry["size"] = draw(st.integers(0, 2**40))
        entry["sha256"] = draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
    elif kind != "dir":
        entry["target"] = draw(texts)
    return draw(texts), entry


@settings(max_examples=3000, deadline=None)
@given(entries())
def test_the_encoders_bytes(path_entry: tuple[str, dict]) -> None:
    path, entry = path_entry
    expected = ENCODER([path, entry]).encode("utf-8", "surrogateescape") + b"\n"
    assert manifest_line(path, entry) == expected
