"""Redis target: back up, destroy, restore, and compare every key, type, value and TTL.

Every test runs its own redis-server instances (random ports, tmp dirs): the shared Redis
on 6379 is never flushed.  Container tests use the real Docker engine and skip, saying
why, when it cannot be reached.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_py

from workers.config import RedisSettings
from workers.errors import TargetError
from workers.store.codec import Codec, CorruptArtifact, read_plain
from workers.targets import redis as target
from workers.targets.redis import bgsave, connection, container_snapshot
from workers.targets.redis.live_restore import REDIS_SERVER
from workers.targets.redis.rdb import verify_rdb

REPO = Path(__file__).resolve().parents[1]
IMAGE = "xiehe/redis:local"


@dataclass
class Server:
    url: str
    port: int
    dir: Path
    proc: subprocess.Popen

    def client(self, db: int = 0) -> redis_py.Redis:
        return connection.client(self.url, db)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ping(url: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            if connection.client(url).ping():
                return
        except redis_py.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start(password=None, config="", rdb=None) -> a private redis-server; all stopped
    at teardown.  The password goes in a 0600 config file, never in argv."""
    procs: list[subprocess.Popen] = []

    def start(password: str | None = None, config: str = "", rdb: Path | None = None) -> Server:
        port = _free_port()
        data = tmp_path / f"redis-{port}"
        data.mkdir(mode=0o700)
        if rdb:
            os.replace(rdb, data / "dump.rdb")
        conf = data / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(
            f'port {port}\nbind 127.0.0.1\ndir "{data}"\ndbfilename dump.rdb\nsave ""\n'
            f'appendonly no\nlogfile "{data}/redis.log"\n'
            + (f"requirepass {password}\n" if password else "")
            + config
        )
        proc = subprocess.Popen([REDIS_SERVER, str(conf)], stdin=subprocess.DEVNULL)
        procs.append(proc)
        auth = f":{password}@" if password else ""
        server = Server(f"redis://{auth}127.0.0.1:{port}/0", port, data, proc)
        _wait_ping(server.url)
        return server

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def fill(url: str) -> None:
    """Every type, binary and Chinese data, TTLs, large (non-listpack) values, three dbs."""
    db0, db3, db15 = (connection.client(url, db) for db in (0, 3, 15))
    db0.set(b"bin:\x00\xff\r\n", bytes(range(256)) * 4)
    db0.set("患者:1001", "诊断：肺结节，建议随访".encode())
    db0.set("session:abc", "token", ex=3600)
    db0.set("cache:px", "soon", px=7_200_500)
    db0.hset("study:1", mapping={"modality": "CT", "描述": "胸部平扫", "bin": b"\x00\x01"})
    db0.hset("big:hash", mapping={f"f{i}": f"v{i}" * 20 for i in range(1000)})
    db0.rpush("queue:dicom", *[f"series-{i}" for i in range(50)], "重复", "重复")
    db0.rpush("big:list", *[os.urandom(64) for _ in range(2000)])
    db0.sadd("tags", "胸部", "CT", "urgent")
    db0.sadd("big:set", *range(1000))
    db0.zadd("worklist", {"a": 1.5, "b": -2, "张": 3e10})
    db0.zadd("big:zset", {f"m{i}": i / 7 for i in range(1000)})
    db0.expire("worklist", 86400)
    for i in range(5):
        db0.xadd("events", {"type": "upload", "n": str(i), "用户": "李医生"})
    db3.set("counter", 42)
    db3.hset("cfg", "k", "v")
    db3.pexpire("cfg", 90_000)
    db15.lpush("last-db", "x")


def snapshot_keys(url: str) -> dict:
    """dump_keys with TTLs turned into absolute expiry times, comparable across time."""
    now = time.time()
    return {
        db: {k: (t, v, None if ttl is None else now + ttl) for k, (t, v, ttl) in keys.items()}
        for db, keys in target.dump_keys(url).items()
    }


def assert_same(expected: dict, actual: dict) -> None:
    assert actual.keys() == expected.keys()
    for db, keys in expected.items():
        assert actual[db].keys() == keys.keys(), f"db {db}"
        for key, (kind, value, expire_at) in keys.items():
            got_kind, got_value, got_expire = actual[db][key]
            assert (got_kind, got_value) == (kind, value), f"db {db} key {key!r}"
            if expire_at is None:
                assert got_expire is None, f"db {db} key {key!r} gained a TTL"
            else:
                assert got_expire is not None, f"db {db} key {key!r} lost its TTL"
                assert abs(got_expire - expire_at) <= 1, f"db {db} key {key!r} TTL moved"


def take_snapshot(settings: RedisSettings, out: Path, docker=None, codec=None) -> dict:
    seen: list[int] = []
    result = target.snapshot(
        settings, docker, out, uuid.uuid4().hex[:8], codec or Codec("zstd", 3), seen.append
    )
    assert sum(seen) == result["artifacts"][0]["plain_bytes"]  # progress counts every byte
    return result


def unpack(artifact: Path, dest: Path) -> Path:
    with open(dest, "wb") as out:
        for chunk in read_plain(artifact):
            out.write(chunk)
    return dest


@pytest.mark.parametrize(
    ("diskless", "save", "read"),
    [
        ("yes", "", "diskless"),  # the master's choice, as redis-cli gets it
        ("no", "", "disk"),
        ("yes", "3600 1", "disk"),  # it writes dump.rdb anyway: no wait for more replicas
    ],
)
def test_live_snapshot_loads_by_hand_into_a_scratch_server(servers, tmp_path, diskless, save, read):
    source = servers(
        config=f"repl-diskless-sync {diskless}\nrepl-diskless-sync-delay 1\nsave {save!r}\n"
    )
    fill(source.url)
    expected = snapshot_keys(source.url)
    result = take_snapshot(RedisSettings(url=source.url, container=None), tmp_path / "out")

    assert (result["mode"], result["read"]) == ("replication", read)
    assert result["keys"] == {0: 13, 3: 2, 15: 1}
    [record] = result["artifacts"]
    assert (record["kind"], record["source"]) == ("redis", "redis")
    artifact = tmp_path / "out" / record["file"]
    assert record["file"].endswith(".rdb.zst") and artifact.stat().st_mode & 0o777 == 0o600
    assert verify_rdb(read_plain(artifact))["rdb_version"] == 10
    scratch = servers(rdb=unpack(artifact, tmp_path / "dump.rdb"))
    assert_same(expected, snapshot_keys(scratch.url))


def test_failed_disk_transfer_is_asked_again_diskless(servers, tmp_path):
    """The master cannot write its RDB (its dir is gone): the same snapshot comes diskless."""
    gone = tmp_path / "gone"
    gone.mkdir()
    source = servers(config=f"repl-diskless-sync-delay 1\nsave '3600 1'\ndir {str(gone)!r}\n")
    fill(source.url)
    expected = snapshot_keys(source.url)
    gone.rmdir()

    result = take_snapshot(RedisSettings(url=source.url, container=None), tmp_path / "out")

    master = connection.client(source.url)
    assert master.info("persistence")["rdb_last_bgsave_status"] == "err"  # disk was tried
    master.config_set("save", "")  # or it refuses to shut down without its save
    assert result["read"] == "diskless"
    artifact = tmp_path / "out" / result["artifacts"][0]["file"]
    scratch = servers(rdb=unpack(artifact, tmp_path / "dump.rdb"))
    assert_same(expected, snapshot_keys(scratch.url))


def test_live_restore_replaces_the_whole_target(servers, tmp_path):
    source, dest = servers(), servers()
    fill(source.url)
    dest.client(7).set("stale", "must disappear")
    dest.client(0).set("session:abc", "old value, no ttl")
    expected = snapshot_keys(source.url)
    result = take_snapshot(RedisSettings(url=source.url, container=None), tmp_path)
    artifact = tmp_path / result["artifacts"][0]["file"]

    done: list[int] = []
    temp_dirs = set(Path(tempfile.gettempdir()).glob("xiehe-redis-*"))
    out = target.restore(
        RedisSettings(url=dest.url, container=None), None, artifact, None, done.append
    )
    assert out["keys"] == {0: 13, 3: 2, 15: 1} and sum(done) > 100_000
    assert_same(expected, snapshot_keys(dest.url))
    left = set(Path(tempfile.gettempdir()).glob("xiehe-redis-*")) - temp_dirs
    assert not left, "temporary redis-server dir left behind"


def test_corrupt_rdb_is_refused_and_target_untouched(servers, tmp_path):
    source, dest = servers(), servers()
    fill(source.url)
    result = take_snapshot(
        RedisSettings(url=source.url, container=None), tmp_path, codec=Codec("none")
    )
    artifact = tmp_path / result["artifacts"][0]["file"]
    good = artifact.read_bytes()
    assert verify_rdb([good[:7], good[7:100], good[100:]])["checksum"]  # any chunking

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    for bad, why in [
        (bytes(flipped), "checksum"),
        (good[:-20], "truncated|checksum"),
        (b"REDIX" + good[5:], "magic"),
        (good[:5] + b"00x1" + good[9:], "version"),
    ]:
        with pytest.raises(CorruptArtifact, match=why):
            verify_rdb([bad])
    damaged = tmp_path / "damaged.rdb"
    damaged.write_bytes(bytes(flipped))
    dest.client(2).set("keep", "me")
    with pytest.raises(CorruptArtifact):
        target.restore(RedisSettings(url=dest.url, container=None), None, damaged, None, print)
    assert dest.client(2).get("keep") == b"me"


def test_disabled_checksum_is_accepted(servers, tmp_path):
    source = servers(config="rdbchecksum no\nrepl-diskless-sync-delay 0\n")
    fill(source.url)
    result = take_snapshot(RedisSettings(url=source.url, container=None), tmp_path)
    summary = verify_rdb(read_plain(tmp_path / result["artifacts"][0]["file"]))
    assert summary["checksum"] is None


def _cmdlines() -> list[bytes]:
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        with suppress(OSError):  # the process may be gone already
            out.append((proc / "cmdline").read_bytes())
    return out


def test_password_protected_redis_never_shows_its_password(servers, tmp_path):
    password = "pw-" + uuid.uuid4().hex
    source, dest = servers(password=password), servers(password=password)
    fill(source.url)
    expected = snapshot_keys(source.url)
    settings = RedisSettings(url=source.url, container=None)
    assert target.check(settings)["keys"] == {0: 13, 3: 2, 15: 1}
    result = take_snapshot(settings, tmp_path)
    assert password not in repr(result) and password not in repr(settings)

    leaks: list[bytes] = []

    def watch(_done: int) -> None:  # runs while the temporary redis-server is up
        leaks.extend(c for c in _cmdlines() if password.encode() in c)
        assert any(b"redis-server" in c and b"xiehe-redis-" in c for c in _cmdlines())

    artifact = tmp_path / result["artifacts"][0]["file"]
    target.restore(RedisSettings(url=dest.url, container=None), None, artifact, None, watch)
    assert not leaks, leaks
    assert_same(expected, snapshot_keys(dest.url))

    wrong = RedisSettings(url=source.url.replace(password, "not-" + password), container=None)
    for call in (target.check, lambda s: take_snapshot(s, tmp_path)):
        with pytest.raises(TargetError) as err:
            call(wrong)
        assert password not in str(err.value) and "not-" not in str(err.value)


def test_unreachable_redis_is_a_target_error():
    with pytest.raises(TargetError, match="cannot reach Redis"):
        target.check(
            RedisSettings(url=f"redis://:secret@127.0.0.1:{_free_port()}/0", container=None)
        )


# --- container mode ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no Docker here
        pytest.skip(f"Docker engine unreachable: {exc}")
    subprocess.run(["bash", str(REPO / "ops/images/build_redis_image.sh"), IMAGE], check=True)
    return client


@pytest.fixture
def redis_container(docker_client):
    """start(*args) -> (container, url): xiehe/redis:local with a named volume at /data."""
    made = []

    def start(*args: str):
        name = f"xiehe-test-redis-{uuid.uuid4().hex[:8]}"
        volume = docker_client.volumes.create(name)
        port = _free_port()
        container = docker_client.containers.run(
            IMAGE,
            ["/usr/bin/redis-server", "--dir", "/data", "--protected-mode", "no", *args],
            name=name,
            detach=True,
            volumes={volume.name: {"bind": "/data", "mode": "rw"}},
            ports={"6379/tcp": ("127.0.0.1", port)},
        )
        made.append((container, volume))
        url = f"redis://127.0.0.1:{port}/0"
        _wait_ping(url)
        return container, url

    yield start
    for container, volume in made:
        container.remove(force=True)
        volume.remove(force=True)


@pytest.mark.parametrize("aof", ["no", "yes"])
def test_container_snapshot_flush_restore(redis_container, docker_client, tmp_path, aof):
    container, url = redis_container("--appendonly", aof)
    settings = RedisSettings(url=url, container=container.name)
    fill(url)
    expected = snapshot_keys(url)
    assert target.check(settings)["aof"] is (aof == "yes")

    result = take_snapshot(settings, tmp_path, docker=docker_client)
    assert result["mode"] == "container"
    assert result["read"].startswith("in place")  # /data's volume, while saved or after
    artifact = tmp_path / result["artifacts"][0]["file"]
    connection.client(url).flushall()
    assert target.dump_keys(url) == {}

    out = target.restore(settings, docker_client, artifact, None, lambda _n: None)
    assert out["mode"] == "container" and out["keys"] == {0: 13, 3: 2, 15: 1}
    assert_same(expected, snapshot_keys(url))

    # The restored data is what the container keeps on its own restarts (AOF or RDB).
    connection.client(url, 3).set("after-restore", "1")
    connection.client(url).save()
    container.restart(timeout=30)
    _wait_ping(url)
    while connection.client(url).info("persistence")["loading"]:
        time.sleep(0.1)
    actual = snapshot_keys(url)
    assert actual[3].pop(b"after-restore")[:2] == ("string", b"1")
    assert_same(expected, actual)


def _load_elsewhere(servers, tmp_path: Path, result: dict) -> dict:
    """The snapshot's RDB loaded into a scratch server: its keys."""
    scratch = servers()
    artifact = tmp_path / result["artifacts"][0]["file"]
    target.restore(RedisSettings(url=scratch.url, container=None), None, artifact, None, print)
    return snapshot_keys(scratch.url)


SLOW_SAVE = ("--rdb-key-save-delay", "50000")  # 50 ms a key: the save of fill() takes ~1 s


def test_container_rdb_is_read_while_redis_writes_it(
    redis_container, docker_client, servers, tmp_path
):
    container, url = redis_container(*SLOW_SAVE)
    fill(url)
    expected = snapshot_keys(url)
    settings = RedisSettings(url=url, container=container.name)
    result = take_snapshot(settings, tmp_path, docker=docker_client)
    assert result["read"] == "in place, while saved"
    assert_same(expected, _load_elsewhere(servers, tmp_path, result))


def test_container_rdb_followed_in_the_wrong_file_is_read_again_once_saved(
    redis_container, docker_client, servers, tmp_path, monkeypatch
):
    """Should the file followed during the save not be the RDB it leaves (a stray temp
    file), what was read of it is thrown away and the saved RDB is read."""
    container, url = redis_container(*SLOW_SAVE)
    fill(url)
    expected = snapshot_keys(url)
    stray = tmp_path / "stray.rdb"
    stray.write_bytes(os.urandom(100_000))
    monkeypatch.setattr(container_snapshot, "_temp_rdb", lambda *_: open(stray, "rb", buffering=0))
    settings = RedisSettings(url=url, container=container.name)
    result = take_snapshot(settings, tmp_path / "out", docker=docker_client)
    assert result["read"] == "in place"
    assert_same(expected, _load_elsewhere(servers, tmp_path / "out", result))


def test_container_rdb_outside_any_volume_is_copied_through_the_engine(
    redis_container, docker_client, servers, tmp_path
):
    container, url = redis_container("--dir", "/tmp")  # the container's own layer
    fill(url)
    expected = snapshot_keys(url)
    settings = RedisSettings(url=url, container=container.name)
    result = take_snapshot(settings, tmp_path, docker=docker_client)
    assert result["read"] == "engine"
    assert_same(expected, _load_elsewhere(servers, tmp_path, result))  # what was copied


def test_container_restore_when_redis_is_down(redis_container, docker_client, tmp_path):
    """The disaster case: Redis is not running, so the layout comes from the container."""
    container, url = redis_container("--appendonly", "yes", "--appendfilename", "medical.aof")
    settings = RedisSettings(url=url, container=container.name)
    fill(url)
    expected = snapshot_keys(url)
    result = take_snapshot(settings, tmp_path, docker=docker_client)
    connection.client(url).flushall()
    container.stop(timeout=30)

    artifact = tmp_path / result["artifacts"][0]["file"]
    target.restore(settings, docker_client, artifact, None, lambda _n: None)
    assert_same(expected, snapshot_keys(url))
    aof = connection.client(url).config_get("appendfilename")["appendfilename"]
    assert aof == "medical.aof"


def test_bgsave_joins_a_save_already_running(servers):
    """A BGSAVE already in progress is waited for; the RDB on disk is then complete."""
    server = servers(config="rdb-key-save-delay 200\n")  # ~1 s save for 5000 keys
    client = server.client()
    client.mset({f"k{i}": i for i in range(5000)})
    before = int(client.lastsave().timestamp())
    client.bgsave()
    assert client.info("persistence")["rdb_bgsave_in_progress"] == 1
    bgsave.bgsave(client)
    info = client.info("persistence")
    assert info["rdb_bgsave_in_progress"] == 0 and info["rdb_last_bgsave_status"] == "ok"
    assert int(client.lastsave().timestamp()) > before
    assert verify_rdb([(server.dir / "dump.rdb").read_bytes()])["bytes"] > 5000
