"""verify finds a damaged artifact and marks the backup bad; prune deletes what the policy
drops (manifest first), keeps what is in use, and --dry-run deletes nothing.

Backups are built by hand in a real tree: real artifacts written by ArtifactWriter (a
complete SQL dump, a real RDB saved by a private redis-server, a tar), real manifests.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from producers.cli.main import main
from tests.conftest import base_env
from tests.support.fake_backups import make_backup, sql_dump, write_artifact
from tests.support.servers import RedisServer
from workers import config
from workers.ops import inuse, retention
from workers.store import manifest as manifests
from workers.store.codec import Codec
from workers.store.layout import Tree

TZ = timezone(timedelta(hours=8))


@pytest.fixture(scope="module")
def rdb(tmp_path_factory) -> bytes:
    """A real RDB: a private redis-server with a few keys, SAVEd."""
    server = RedisServer(tmp_path_factory.mktemp("rdb"))
    try:
        client = server.client()
        client.mset({f"study:{i}": f"series {i}" for i in range(50)})
        client.save()
        return (server.dir / "dump.rdb").read_bytes()
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path, broker, monkeypatch) -> dict:
    values = base_env(broker.url, tmp_path / "backups")
    for key in [k for k in values if k.startswith("XIEHE_")]:
        monkeypatch.setenv(key, values[key])
    Tree(tmp_path / "backups").ensure()
    return values


def tree_of(env: dict) -> Tree:
    return Tree(Path(env["XIEHE_BACKUP_DIR"]))


def listed(capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    return {r["id"]: r["status"] for r in json.loads(capsys.readouterr().out)}


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_finds_a_damaged_artifact_and_list_shows_it(env, rdb, capsys, damage):
    tree = tree_of(env)
    good = make_backup(tree, datetime(2024, 6, 1, 2, tzinfo=TZ), rdb)
    bad = make_backup(tree, datetime(2024, 6, 2, 2, tzinfo=TZ), rdb)
    victim = tree.artifact_path(manifests.read(tree, bad)["artifacts"][1])  # the RDB
    if damage == "flip":
        flip_byte(victim, victim.stat().st_size // 2)
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-20])
    else:
        victim.unlink()
    capsys.readouterr()
    assert main(["verify", "--all"]) == 1
    out = capsys.readouterr().out
    assert f"{good}  verified" in out
    assert f"{bad}  FAILED: dump_{bad}.rdb.zst" in out
    assert listed(capsys) == {good: "verified", bad: "failed-verification"}
    record = manifests.read(tree, bad)["verification"]
    assert record["ok"] is False and f"dump_{bad}.rdb.zst" in record["cause"] and record["at"]


def test_a_damaged_dump_is_found_even_when_its_sha256_is_rewritten(env, rdb, capsys):
    """A dump cut before its completion marker (and a manifest made to match) is bad."""
    tree = tree_of(env)
    backup_id = make_backup(tree, datetime(2024, 6, 1, 2, tzinfo=TZ), rdb, codec=Codec("none"))
    manifest = manifests.read(tree, backup_id)
    dump = manifest["artifacts"][0]
    cut = write_artifact(tree, "mysql", dump["source"], sql_dump(500)[:-30], Codec("none"))
    manifest["artifacts"][0] = {**dump, **cut}
    manifests.write(tree, manifest)
    assert main(["verify", backup_id]) == 1
    assert "no completion marker" in manifests.read(tree, backup_id)["verification"]["cause"]


def test_a_backup_that_verifies_again_is_marked_verified_again(env, rdb, capsys):
    tree = tree_of(env)
    backup_id = make_backup(
        tree, datetime(2024, 6, 1, 2, tzinfo=TZ), rdb, status="failed-verification"
    )
    assert main(["verify", backup_id]) == 0
    assert listed(capsys) == {backup_id: "verified"}
    assert main(["verify", "20990101_000000"]) == 1
    assert "unknown backup id" in capsys.readouterr().err


def files_in(tree: Tree) -> set[str]:
    return {str(p.relative_to(tree.root)) for p in tree.root.rglob("*") if p.is_file()}


def history(tree: Tree, rdb: bytes, days: int, failed: set[int]) -> list[str]:
    start = datetime.now(TZ).replace(hour=2, minute=0, second=0, microsecond=0)
    return [
        make_backup(
            tree,
            start - timedelta(days=n),
            rdb,
            "failed-verification" if n in failed else "verified",
        )
        for n in reversed(range(days))
    ]


def test_prune_dry_run_deletes_nothing_and_prune_deletes_exactly_what_it_printed(
    env, rdb, capsys, monkeypatch
):
    monkeypatch.setenv("XIEHE_KEEP_LAST", "2")
    monkeypatch.setenv("XIEHE_KEEP_DAILY", "3")
    monkeypatch.setenv("XIEHE_KEEP_WEEKLY", "0")
    monkeypatch.setenv("XIEHE_KEEP_MONTHLY", "0")
    tree = tree_of(env)
    ids = history(tree, rdb, 6, failed={1})  # n=1: yesterday's backup is bad
    before = files_in(tree)
    capsys.readouterr()
    assert main(["prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert files_in(tree) == before
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert set(lines) == set(ids)
    newest, bad = ids[-1], ids[-2]
    assert "keep" in lines[newest] and "newest verified" in lines[newest]
    assert "would delete" in lines[bad] and "not verified" in lines[bad]
    doomed = {i for i, line in lines.items() if "would delete" in line}
    assert doomed == {bad, *ids[:2]}  # kept: today, 2 and 3 days ago (daily 3)
    assert "dry run: nothing deleted" in out

    assert main(["prune"]) == 0
    assert set(listed(capsys)) == set(ids) - doomed
    left = files_in(tree)
    assert not [f for f in left if any(i in f for i in doomed)], "every file of a pruned backup"
    for backup_id in set(ids) - doomed:
        assert main(["verify", backup_id]) == 0  # what is kept is whole


def test_prune_keeps_a_backup_in_use_and_finishes_a_prune_cut_short(env, rdb, capsys):
    settings = config.load()
    tree = tree_of(env)
    ids = history(tree, rdb, 3, failed={1, 2})
    client = inuse.broker(settings)
    with inuse.using(client, ids[0], "drill-test", ttl=30):
        result = retention.prune_with(settings, client)
    decisions = {d["id"]: d for d in result["decisions"]}
    assert decisions[ids[0]]["keep"] and decisions[ids[0]]["rules"] == ["in use by drill-test"]
    assert result["deleted"] == [ids[1]]
    # A prune that died after hiding the manifest: the backup is gone from the listing at
    # once, and the next prune removes its files.
    stone = tree.root / retention.TOMBSTONES / f"{ids[0]}.json"
    stone.parent.mkdir(exist_ok=True)
    tree.manifest(ids[0]).rename(stone)
    assert ids[0] not in listed(capsys)
    assert retention.prune_with(settings, client)["resumed"] == [ids[0]]
    assert not [f for f in files_in(tree) if ids[0] in f]
    assert set(listed(capsys)) == {ids[2]}
