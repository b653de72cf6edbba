"""Tar headers as a full archive stores them: ./names, numeric owners, only xattrs of
the PAX fields; from the engine's members or from a listing."""

from __future__ import annotations

import tarfile

from workers.targets.tar_safety import ROOT, normalize
from workers.targets.volumes import index as vi


def padded(size: int) -> int:
    """A member's data size rounded up to whole tar blocks."""
    return size + (-size % tarfile.BLOCKSIZE)


def tar_name(path: str) -> str:
    """A normalized path as the engine names it in a tar: ./path (the root: ".")."""
    return ROOT if path == ROOT else f"./{path}"


def xattrs_of(pax_headers: dict) -> dict:
    """Of a member's PAX fields, only the extended attributes."""
    return {k: v for k, v in pax_headers.items() if k.startswith("SCHILY.xattr.")}


def fresh_header(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """The engine's member as a full archive stores it: ./names, numeric owners, xattrs."""
    member.name = tar_name(path)
    if member.islnk():
        member.linkname = tar_name(normalize(member.linkname))
    if member.issparse():
        member.type = tarfile.REGTYPE  # extractfile() gives it back expanded
    member.pax_headers = xattrs_of(member.pax_headers)
    member.uname = member.gname = ""
    return member


_TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}


def listed_header(step: vi.Step, xattrs: dict | None) -> tarfile.TarInfo:
    """The header a full archive would hold, from the listing (xattrs: read now or index)."""
    item = step.item
    info = tarfile.TarInfo(tar_name(item.path))
    info.type = tarfile.LNKTYPE if step.kind == "hardlink" else _TYPES[item.kind]
    info.mode, info.uid, info.gid, info.mtime = item.mode, item.uid, item.gid, item.mtime
    info.size = item.size if step.kind == "file" else 0
    info.linkname = tar_name(step.linkname) if step.kind == "hardlink" else step.linkname
    info.uname = info.gname = ""
    info.pax_headers = dict(step.xattrs or {}) if xattrs is None else xattrs
    return info
