"""Backups built by hand in a real tree: real artifacts (ArtifactWriter), real manifests."""

from __future__ import annotations

import io
import tarfile
from datetime import datetime

from workers.steps.staging import with_paths
from workers.store import manifest as manifests
from workers.store.codec import ArtifactWriter, Codec
from workers.store.layout import Tree

ZSTD = Codec("zstd")


def sql_dump(rows: int) -> bytes:
    body = b"".join(b"INSERT INTO t VALUES (%d,'patient %d');\n" % (i, i) for i in range(rows))
    return b"CREATE TABLE t (id INT PRIMARY KEY, name TEXT);\n" + body + b"-- Dump completed\n"


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_artifact(tree: Tree, kind: str, name: str, data: bytes, codec: Codec) -> dict:
    with ArtifactWriter(tree.final_dir(kind) / name, codec) as writer:
        writer.write(data)
        record = writer.commit()
    return {**record, "kind": kind, "source": name}


def make_backup(
    tree: Tree,
    at: datetime,
    rdb: bytes,
    status: str = "verified",
    reason: str = "scheduled",
    codec: Codec = ZSTD,
) -> str:
    backup_id = at.strftime("%Y%m%d_%H%M%S")
    artifacts = with_paths(
        [
            write_artifact(tree, "mysql", f"medical_system_{backup_id}.sql", sql_dump(500), codec),
            write_artifact(tree, "redis", f"dump_{backup_id}.rdb", rdb, codec),
            write_artifact(
                tree,
                "volume",
                f"orthanc_{backup_id}.tar",
                tar_bytes({"a.dcm": b"x" * 5000, "b.dcm": b"y" * 10}),
                codec,
            ),
        ]
    )
    manifest = {
        "format": 1,
        "id": backup_id,
        "status": status,
        "created_at": at.isoformat(),
        "finished_at": at.isoformat(),
        "reason": reason,
        "kinds": ["mysql", "redis", "volumes"],
        "artifacts": artifacts,
        "size_bytes": sum(a["size_bytes"] for a in artifacts),
        "host": "test",
        "tool": {"name": "xiehe-backup", "version": "test"},
    }
    (tree.backup_info(backup_id)).write_text(manifests.info_text(manifest))
    manifests.write(tree, manifest)
    return backup_id
