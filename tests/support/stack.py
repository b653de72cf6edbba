"""A small XieHe stack on real services: a MariaDB database, a Redis, a Docker volume.

`Stack.snapshot()` captures everything a user would compare after a restore: every
table's CHECKSUM TABLE and row count, routines, triggers and views; every Redis key
with type, value and TTL; every file of every volume with hash, mode, owner and link.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from dataclasses import dataclass, field

import pymysql

from workers.config import MySQLSettings
from workers.targets import mysql, redis, volumes

SCHEMA = [
    """CREATE TABLE patients (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(64),
       note TEXT, photo BLOB, born DATE, weight DECIMAL(6,2)) CHARSET utf8mb4""",
    """CREATE TABLE studies (id INT PRIMARY KEY AUTO_INCREMENT, patient_id INT NOT NULL,
       meta JSON, taken DATETIME(6), FOREIGN KEY (patient_id) REFERENCES patients(id))""",
    """CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(32))""",
    """CREATE TRIGGER patients_audit AFTER INSERT ON patients FOR EACH ROW
       INSERT INTO audit (what) VALUES (CONCAT('patient ', NEW.id))""",
    """CREATE VIEW patient_names AS SELECT id, name FROM patients""",
    """CREATE PROCEDURE count_patients() SELECT COUNT(*) FROM patients""",
]


def fill_mysql(conn: pymysql.Connection, db: str, rows: int = 300) -> None:
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
        cur.execute(f"USE `{db}`")
        for statement in SCHEMA:
            cur.execute(statement)
        cur.executemany(
            "INSERT INTO patients (name, note, photo, born, weight) VALUES (%s,%s,%s,%s,%s)",
            [
                (
                    f"患者{i} 🏥",
                    "诊断报告：肺部CT未见异常。" * (i % 7),
                    os.urandom(64) + b"\0'\"\\",
                    f"19{50 + i % 50}-0{1 + i % 9}-1{i % 9}",
                    i * 1.25 if i % 5 else None,
                )
                for i in range(rows)
            ],
        )
        cur.executemany(
            "INSERT INTO studies (patient_id, meta, taken) VALUES (%s,%s,NOW(6))",
            [
                (1 + i % rows, f'{{"modality": "CT", "series": {i}, "名": "胸部"}}')
                for i in range(rows)
            ],
        )


def fill_redis(url: str) -> None:
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    client.set("session:1", "用户会话 ✓", ex=3600)
    client.set(b"bin\x00key", os.urandom(100))
    client.hset("patient:1", mapping={"name": "张三", "age": "42"})
    client.rpush("queue:ai", *[f"study-{i}" for i in range(50)])
    client.sadd("online", "a", "b", "c")
    client.zadd("worklist", {f"study-{i}": i for i in range(30)})
    client.xadd("events", {"type": "login", "user": "1"})
    client.pexpire("queue:ai", 7_200_000)
    other = redis_py.Redis.from_url(url.rsplit("/", 1)[0] + "/3")
    other.set("db3:token", "x", ex=600)


def volume_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name, data=None, kind=tarfile.REGTYPE, mode=0o644, uid=0, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, uid, link
            info.mtime = int(time.time()) - 3600
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("dicom", kind=tarfile.DIRTYPE, mode=0o755)
        add("dicom/影像 报告.dcm", os.urandom(300_000), mode=0o640, uid=1000)
        add("dicom/smooth.dcm", bytes(range(256)) * 2000, mode=0o600, uid=999)
        add("empty dir", kind=tarfile.DIRTYPE, mode=0o700)
        add(".hidden", b"dot", mode=0o600)
        add("latest", kind=tarfile.SYMTYPE, link="dicom/smooth.dcm", mode=0o777)
    return buf.getvalue()


def fill_volume(client, name: str, image: str) -> None:
    client.volumes.create(name)
    container = client.containers.create(
        image, "true", volumes={name: {"bind": "/v", "mode": "rw"}}
    )
    try:
        container.put_archive("/v", volume_tar())
    finally:
        container.remove(force=True)


@dataclass
class Stack:
    mysql: MySQLSettings
    db: str
    redis_url: str
    volume_names: list[str] = field(default_factory=list)
    docker: object = None
    helper_image: str = ""

    def snapshot(self) -> dict:
        out = {
            "tables": mysql.checksums(self.mysql, self.db),
            "objects": mysql.objects(self.mysql, self.db),
            "keys": redis.dump_keys(self.redis_url),
            "keys_at": time.time(),
        }
        for name in self.volume_names:
            out[f"volume:{name}"] = volumes.file_inventory(self.docker, name, self.helper_image)
        return out


def assert_same(before: dict, after: dict) -> None:
    """Equal in every table, object, key (expiry within 2 s) and file."""
    assert after.keys() == before.keys()
    for part in before:
        if part not in ("keys", "keys_at"):
            assert after[part] == before[part], part
    assert after["keys"].keys() == before["keys"].keys()
    for db, keys in before["keys"].items():
        assert after["keys"][db].keys() == keys.keys(), f"redis db {db}"
        for key, (kind, value, ttl) in keys.items():
            a_kind, a_value, a_ttl = after["keys"][db][key]
            assert (a_kind, a_value) == (kind, value), key
            assert (ttl is None) == (a_ttl is None), key
            if ttl is not None:
                # Expiry is absolute in Redis: compare the moments the keys expire.
                assert abs((ttl + before["keys_at"]) - (a_ttl + after["keys_at"])) <= 2, key
