"""The fast tar header is byte for byte tarfile's PAX header, for every kind of entry."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.targets.volumes.tar_header import header

TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
# Names around the 100-byte field, non-ASCII and undecodable ones (surrogates) included.
names = st.text(st.sampled_from("ab/._-é影\udcff "), min_size=1, max_size=130) | st.text(
    st.sampled_from("abc/"), min_size=95, max_size=105
)
numbers = st.integers(0, 8**7 + 2) | st.sampled_from([0, 8**7 - 1, 8**7, 8**11 - 1, 8**11])


@st.composite
def entries(draw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(draw(names))
    info.type = draw(st.sampled_from(TYPES))
    info.mode = draw(st.integers(0, 0o177777))
    info.uid, info.gid = draw(numbers), draw(numbers)
    info.size = draw(numbers) if info.type == tarfile.REGTYPE else 0
    info.mtime = draw(numbers | st.floats(0, 2e9, allow_nan=False))
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(names)
    info.uname = info.gname = draw(st.sampled_from(["", "", "root"]))
    if draw(st.booleans()) and draw(st.booleans()):
        info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    return info


@settings(max_examples=2000, deadline=None)
@given(entries())
def test_the_same_bytes_as_tarfile(info: tarfile.TarInfo) -> None:
    assert header(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_tarfile_reads_the_fast_header_back() -> None:
    info = tarfile.TarInfo("scans/2026/ct-0001.dcm")
    info.size, info.mode, info.uid, info.gid, info.mtime = 3, 0o640, 1000, 1000, 1_764_000_000
    stream = io.BytesIO(header(info) + b"abc".ljust(512, b"\0") + bytes(1024))
    with tarfile.open(fileobj=stream) as tar:
        member = tar.next()
        assert (member.name, member.size, member.mode, member.uid, member.mtime) == (
            "scans/2026/ct-0001.dcm", 3, 0o640, 1000, 1_764_000_000,
        )  # fmt: skip
        assert tar.extractfile(member).read() == b"abc"
