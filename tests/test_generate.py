"""The benchmark data set generator: demo size, deterministic, and re-runnable."""

from __future__ import annotations

import pytest

from bench import generate as gen
from tests.conftest import MYSQL, unique

TARGET = gen.MySQLTarget(MYSQL["host"], MYSQL["port"], MYSQL["user"], MYSQL["password"])
DEMO = gen.SIZES["demo"]


def table_digest(cur, db: str) -> dict[str, tuple]:
    """Row count and a checksum per table: equal digests mean the same data."""
    out = {}
    for table in ("patients", "studies", "reports", "audit_log"):
        cur.execute(f"SELECT COUNT(*) FROM `{db}`.`{table}`")
        (count,) = cur.fetchone()
        cur.execute(f"CHECKSUM TABLE `{db}`.`{table}`")
        out[table] = (count, cur.fetchone()[1])
    return out


def test_mysql_set_is_complete_and_deterministic(scratch_db, mysql_conn):
    db = scratch_db("gen")
    counts = gen.generate_mysql(TARGET, db, DEMO)
    with mysql_conn.cursor() as cur:
        first = table_digest(cur, db)
        assert {t: c for t, (c, _) in first.items()} == counts
        assert counts["studies"] == DEMO.studies and counts["patients"] > 0
        cur.execute(f"SELECT findings FROM `{db}`.reports WHERE id = 1")
        assert "，" in cur.fetchone()[0]  # long Chinese text survived the round trip
        cur.execute(f"SELECT JSON_VALUE(detail, '$.client') FROM `{db}`.audit_log LIMIT 1")
        assert cur.fetchone()[0] in ("web", "pacs-viewer", "mobile")
        cur.execute(f"SELECT COUNT(*) FROM `{db}`.v_study_summary")
        assert cur.fetchone()[0] == counts["studies"]
        cur.execute(f"SHOW TRIGGERS FROM `{db}`")
        assert len(cur.fetchall()) == 1
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema=%s", (db,)
        )
        assert cur.fetchone()[0] == 1

        gen.generate_mysql(TARGET, db, DEMO)  # re-running replaces, with the same data
        assert table_digest(cur, db) == first


def test_redis_set_replaces_only_its_own_keys(redis_server):
    server = redis_server()
    client = server.client()
    client.set("someone:else", "kept")
    counts = gen.generate_redis(server.url, DEMO)
    again = gen.generate_redis(server.url, DEMO)

    assert again == counts and counts["keys"] == client.dbsize() - 1
    assert client.get("someone:else") == b"kept"
    types = {client.type(k).decode() for k in client.scan_iter(match="med:*", count=1000)}
    assert types == {"string", "hash", "zset", "stream", "list", "set"}
    assert 0 < client.ttl("med:session:00000001") <= 7 * 86400
    assert client.xlen("med:events") > 100


def volume_listing(docker_client, image: str, volume: str) -> list[str]:
    out = docker_client.containers.run(
        image,
        ["sh", "-c", "cd /data && find . -type f | sort"],
        volumes={volume: {"bind": "/data", "mode": "ro"}},
        remove=True,
    )
    return out.decode().split()


@pytest.fixture
def scratch_volume(docker_client):
    name = unique("xt_gen_uploads")
    yield name
    docker_client.volumes.get(name).remove(force=True)


def test_volume_is_filled_replaced_and_grown(docker_client, helper_image, scratch_volume):
    first = gen.fill_volume(docker_client, scratch_volume, DEMO, helper_image)
    files = volume_listing(docker_client, helper_image, scratch_volume)
    assert len(files) == first["files"] > 5
    assert first["bytes"] >= DEMO.upload_bytes

    assert gen.fill_volume(docker_client, scratch_volume, DEMO, helper_image) == first
    assert volume_listing(docker_client, helper_image, scratch_volume) == files

    added = gen.add_uploads(docker_client, scratch_volume, 1, helper_image)
    grown = volume_listing(docker_client, helper_image, scratch_volume)
    assert added["files"] >= 1 and len(grown) == len(files) + added["files"]
    assert set(files) < set(grown)
