"""A drill restores a real backup into scratch targets and passes; on a doctored backup it
fails; it never touches the production targets and leaves no scratch target behind."""

from __future__ import annotations

import json

import pytest

from producers.cli.main import main
from tests.conftest import all_targets_env, unique
from workers import workflows
from workers.store import manifest as manifests
from workers.store.layout import Tree
from workers.targets import volumes


@pytest.fixture
def backup(
    tmp_path, broker, redis_server, scratch_db, mysql_conn, docker_client, helper_image, monkeypatch
):
    """A real backup of a database, a Redis and a volume, made by the backup workflow."""
    database = scratch_db("drill")
    with mysql_conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(f"CREATE TABLE `{database}`.studies (id INT PRIMARY KEY, uid TEXT)")
        cur.execute(
            f"INSERT INTO `{database}`.studies VALUES "
            + ",".join(f"({i}, '1.2.840.{i}')" for i in range(300))
        )
        cur.execute(f"CREATE VIEW `{database}`.v AS SELECT COUNT(*) n FROM `{database}`.studies")
    app_redis = redis_server()
    app_redis.client().mset({f"session:{i}": i for i in range(120)})
    app_redis.client(2).set("cache", "x")
    volume = docker_client.volumes.create(unique("xt_drill"))
    docker_client.containers.run(
        helper_image,
        [
            "sh",
            "-c",
            "mkdir -p /v/a && echo one > /v/a/1.dcm && "
            "echo two > /v/2.dcm && ln -s a/1.dcm /v/link",
        ],
        volumes={volume.name: {"bind": "/v", "mode": "rw"}},
        remove=True,
    )
    all_targets_env(
        broker.url, tmp_path / "backups", database, app_redis.url, volume.name, monkeypatch
    )
    run = workflows.new_backup_run(
        workflows.reserve_id(broker.client()), ["mysql", "redis", "volumes"], {}, "drill test"
    )
    run = workflows.run_inline(run)
    yield {
        "id": run["id"],
        "tree": Tree(tmp_path / "backups"),
        "database": database,
        "volume": volume.name,
        "redis": app_redis,
    }
    volume.remove(force=True)


def scratch_left(mysql_conn, docker_client, backup_id: str) -> list[str]:
    with mysql_conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (f"drill_{backup_id}%",))
        dbs = [row[0] for row in cur.fetchall()]
    vols = [
        v.name
        for v in docker_client.volumes.list(filters={"label": "xiehe.drill"})
        if backup_id in v.name
    ]
    return dbs + vols


def test_a_drill_passes_on_a_good_backup_and_records_its_rto(
    backup, mysql_conn, docker_client, helper_image, capsys
):
    before_db = _checksum(mysql_conn, backup["database"])
    before_vol = volumes.file_inventory(docker_client, backup["volume"], helper_image)
    capsys.readouterr()
    assert main(["drill", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["id"] == backup["id"] and result["ok"]
    assert set(result["details"]) == {
        f"mysql:{backup['database']}",
        "redis",
        f"volume:{backup['volume']}",
    }
    assert result["details"]["redis"]["keys"] == 121
    assert result["details"][f"mysql:{backup['database']}"]["tables"] == 1
    assert result["rto_seconds"] > 0
    [record] = manifests.read(backup["tree"], backup["id"])["drills"]
    assert record["ok"] and record["rto_seconds"] == result["rto_seconds"]
    # production untouched, nothing left behind
    assert _checksum(mysql_conn, backup["database"]) == before_db
    assert volumes.file_inventory(docker_client, backup["volume"], helper_image) == before_vol
    assert backup["redis"].client().dbsize() == 120
    assert scratch_left(mysql_conn, docker_client, backup["id"]) == []
    metrics = (backup["tree"].root / ".metrics" / "xiehe_backup.prom").read_text()
    assert "xiehe_backup_drill_last_ok 1" in metrics


def test_a_drill_fails_on_a_doctored_backup(backup, mysql_conn, docker_client, capsys):
    tree, backup_id, db = backup["tree"], backup["id"], backup["database"]
    manifest = manifests.read(tree, backup_id)
    manifest["mysql"]["databases"][db]["tables"]["studies"]["rows"] = 301
    manifest["redis"]["keys"] = {"0": 120, "2": 5}
    manifest["volumes"][backup["volume"]]["manifest_sha256"] = "0" * 64
    manifests.write(tree, manifest)
    capsys.readouterr()
    assert main(["drill", backup_id]) == 1
    out = capsys.readouterr().out
    assert f"mysql:{db}" in out and "studies: expected" in out
    assert "2: expected 5, found 1" in out
    assert "content digest differs" in out and "FAILED" in out
    [record] = manifests.read(tree, backup_id)["drills"]
    assert record["ok"] is False
    assert scratch_left(mysql_conn, docker_client, backup_id) == []


def test_a_damaged_artifact_fails_its_kind_and_the_others_are_still_drilled(backup, capsys):
    tree, backup_id = backup["tree"], backup["id"]
    dump = next(a for a in manifests.read(tree, backup_id)["artifacts"] if a["kind"] == "mysql")
    path = tree.artifact_path(dump)
    path.write_bytes(path.read_bytes()[:-40])
    capsys.readouterr()
    assert main(["drill", backup_id, "--json"]) == 1
    details = json.loads(capsys.readouterr().out)["details"]
    assert not details[f"mysql:{backup['database']}"]["ok"]
    assert details["redis"]["ok"] and details[f"volume:{backup['volume']}"]["ok"]


def _checksum(conn, database: str) -> tuple:
    with conn.cursor() as cur:
        cur.execute(f"CHECKSUM TABLE `{database}`.studies")
        return cur.fetchall()
