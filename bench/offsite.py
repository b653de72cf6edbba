"""Off-site copies of the uploads backups a `bench.run --keep` left, to a local OpenSSH server:

    python3 -m bench.offsite [--workdir /var/tmp/xiehe-bench]

Each volume-only backup of the bench's tree (the uploads' first run, then after 1% new
files, then 1% again) is sent in turn to two remotes: one we prune, whose parts go to its
shared pool, and a write-once one (`prune=off`), which keeps every copy whole as all copies
did before the pool.  Prints the time, the bytes sent and reused per copy, what the remote
holds at the end, and the ratio whole/pooled.  The bench's tree is linked (`cp -al`), not
changed.  Needs root (sshd and its user, as the tests' off-site server).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.support.offsite import SftpServer
from workers.offsite import settings as offsite_settings
from workers.offsite.rclone import Rclone
from workers.offsite.replicate import replicate
from workers.store import manifest as manifests
from workers.store.layout import Tree

LAYOUTS = {"pooled": "", "whole (prune=off)": "&prune=off"}


def linked_tree(source: Path, into: Path) -> Tree:
    """The bench's tree hard-linked; its manifests copied, without an earlier run's cache."""
    shutil.rmtree(into, ignore_errors=True)
    subprocess.run(["cp", "-al", str(source), str(into)], check=True)
    tree = Tree(into)
    for backup_id in tree.manifest_ids():
        manifest = manifests.read(tree, backup_id)
        manifest.pop("pooled_md5", None)
        tree.manifest(backup_id).unlink()  # a new file: the bench's own stays as it is
        manifests.write(tree, manifest)
    return tree


def volume_backups(tree: Tree) -> list[str]:
    found = manifests.read_all(tree)
    return [m["id"] for m in found if {a["kind"] for a in m["artifacts"]} == {"volume"}]


def copies(tree: Tree, ids: list[str], workdir: Path, label: str, options: str) -> list[dict]:
    server = SftpServer(workdir / f"sftp-{len(options)}", f"bench{int(time.time() * 1000)}")
    try:
        offsite = offsite_settings.load({"XIEHE_OFFSITE": f"r={server.url()}{options}"})
        rclone = Rclone(offsite.remotes[0], offsite)
        rows = []
        for backup_id in ids:
            start = time.monotonic()
            sent = replicate(tree, rclone, backup_id)
            rows.append(
                {
                    "layout": label,
                    "id": backup_id,
                    "seconds": round(time.monotonic() - start, 2),
                    "sent_mb": round(sent["sent_bytes"] / 2**20, 1),
                    "reused_mb": round(sent["reused_bytes"] / 2**20, 1),
                }
            )
        du = subprocess.run(["du", "-sm", str(server.root)], capture_output=True, text=True)
        rows[-1]["remote_mb"] = int(du.stdout.split()[0])
        return rows
    finally:
        server.close()
        shutil.rmtree(workdir / f"sftp-{len(options)}", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/xiehe-bench"))
    args = parser.parse_args()
    tree = linked_tree(args.workdir / "backups", args.workdir / "offsite-tree")
    ids = volume_backups(tree)
    if len(ids) < 2:
        raise SystemExit("run `python3 -m bench.run --size ref --keep --only uploads` first")
    rows = []
    for label, options in LAYOUTS.items():
        rows += copies(tree, ids, args.workdir, label, options)
    print(f"{'layout':18} {'backup':16} {'time s':>7} {'sent MB':>8} {'reused MB':>9} remote MB")
    for r in rows:
        print(
            f"{r['layout']:18} {r['id']:16} {r['seconds']:7.2f} {r['sent_mb']:8.1f} "
            f"{r['reused_mb']:9.1f} {r.get('remote_mb', '')}"
        )
    pooled, whole = (rows[i * len(ids) : (i + 1) * len(ids)] for i in range(2))
    for p, w in zip(pooled[1:], whole[1:], strict=True):
        print(f"copy of {p['id']}: whole/pooled time {w['seconds'] / p['seconds']:.2f}x")
    print(
        f"remote after {len(ids)} copies: whole/pooled {whole[-1]['remote_mb']}/"
        f"{pooled[-1]['remote_mb']} MB"
    )
    out = Path(__file__).parent / "results" / f"{time.strftime('%Y%m%dT%H%M%S')}-offsite.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"results: {out}")
    shutil.rmtree(args.workdir / "offsite-tree", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
