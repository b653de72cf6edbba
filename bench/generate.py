"""Create a deterministic XieHe-like data set: MySQL, Redis and Docker volumes.

    python3 -m bench.generate --mysql-db NAME --redis-url URL --volumes uploads,models \
        --size demo|small|ref [--add-uploads-percent 1]

Re-running replaces the data set: the database is dropped and created again, the Redis keys
under `med:` are deleted (never FLUSHDB: the server may be shared), and each volume is emptied
before it is filled.  A volume whose name contains "model" gets a few large model files, any
other volume gets DICOM-like uploads (half noise, half smooth gradients that compress well).
The MySQL password comes only from XIEHE_MYSQL_PASSWORD, never from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import pymysql
import redis

SEED = 20240607
EPOCH = datetime(2024, 1, 1, 8, 0, 0)
REDIS_PREFIX = "med:"
MB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """Approximate payload bytes per store (the on-disk size adds the engines' overhead)."""

    mysql_bytes: int
    redis_bytes: int
    upload_bytes: int

    @property
    def studies(self) -> int:
        return max(50, self.mysql_bytes // 7000)  # ~7 KB per study: thumbnail, report, audit


SIZES = {
    "demo": Plan(8 * MB, 4 * MB, 8 * MB),
    "small": Plan(40 * MB, 20 * MB, 40 * MB),
    "ref": Plan(200 * MB, 100 * MB, 200 * MB),
}


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str

    def connect(self, db: str | None = None) -> pymysql.Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=db,
            charset="utf8mb4",
            autocommit=True,
            max_allowed_packet=64 * MB,
        )


# --------------------------------------------------------------------------- content

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌"
PHRASES = (
    "双肺纹理增多、增粗，",
    "右肺上叶见斑片状高密度影，边界模糊，",
    "纵隔居中，未见明显肿大淋巴结，",
    "心影大小形态未见异常，",
    "双侧胸腔未见积液，",
    "肝脏大小形态正常，实质密度均匀，",
    "胆囊不大，壁不厚，腔内未见异常密度影，",
    "胰腺形态及密度未见异常，",
    "脾脏不大，",
    "双肾形态大小正常，未见明确结石影，",
    "腹膜后未见肿大淋巴结，",
    "脑实质内未见异常密度影，",
    "脑室系统未见扩大，中线结构居中，",
    "颅骨骨质未见异常，",
    "腰椎生理曲度变直，",
    "L4/5椎间盘向后突出，硬膜囊受压，",
    "椎体边缘骨质增生，",
    "左侧膝关节间隙变窄，",
    "关节面下见囊状低密度影，",
    "软组织未见明显肿胀。",
    "考虑炎性病变，建议治疗后复查。",
    "请结合临床及实验室检查。",
    "甲状腺右叶见低回声结节，大小约8×6mm，边界清，",
    "乳腺腺体结构紊乱，未见明确占位，",
    "冠状动脉钙化积分为12分，",
    "主动脉壁可见钙化斑块，",
    "右侧上颌窦黏膜增厚，",
    "左肾见一类圆形低密度影，CT值约8HU，考虑囊肿，",
    "前列腺体积增大，密度欠均匀，",
    "盆腔未见积液。",
)
IMPRESSIONS = (
    "右肺上叶炎症，建议抗炎治疗后复查。",
    "未见明显异常。",
    "腰椎退行性变，L4/5椎间盘突出。",
    "左肾囊肿。",
    "甲状腺右叶结节，TI-RADS 3类。",
    "脂肪肝。",
    "冠状动脉粥样硬化。",
)
MODALITIES = ("CT", "MR", "DX", "US", "PT")
BODY_PARTS = ("胸部", "腹部", "头颅", "腰椎", "膝关节", "甲状腺", "乳腺", "盆腔")
DOCTORS = tuple(f"{s}{g}医生" for s, g in zip(SURNAMES[:12], GIVEN[:12], strict=True))


def chinese_name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.randint(1, 2)))


def report_text(rng: random.Random, mean_bytes: int) -> str:
    """Radiology findings; a phrase is ~40 bytes in UTF-8."""
    return "".join(rng.choices(PHRASES, k=max(3, int(rng.gauss(mean_bytes, mean_bytes / 4)) // 40)))


def noise(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def smooth(rng: random.Random, n: int, width: int = 512) -> bytes:
    """An image-like gradient: each row is the previous one shifted, so it compresses well."""
    a, b = rng.randint(1, 4), rng.randint(0, 255)
    row = bytes((b + a * i // 3 + (i * i) // (width * 7)) & 0xFF for i in range(width))
    rows = (row[k % width :] + row[: k % width] for k in range(n // width + 1))
    return b"".join(rows)[:n]


def pixels(rng: random.Random, n: int, noisy: bool) -> bytes:
    return noise(rng, n) if noisy else smooth(rng, n)


# --------------------------------------------------------------------------- MySQL

SCHEMA = (
    """CREATE TABLE patients (
        id INT PRIMARY KEY, patient_no VARCHAR(32) NOT NULL UNIQUE, name VARCHAR(64) NOT NULL,
        gender ENUM('M','F') NOT NULL, birth_date DATE, phone VARCHAR(20),
        id_card CHAR(18), address VARCHAR(255), created_at DATETIME(3) NOT NULL,
        KEY idx_name (name)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE studies (
        id BIGINT PRIMARY KEY, patient_id INT NOT NULL, study_uid VARCHAR(64) NOT NULL UNIQUE,
        modality ENUM('CT','MR','DX','US','PT') NOT NULL, body_part VARCHAR(32),
        study_time DATETIME NOT NULL, status VARCHAR(16) NOT NULL, thumbnail MEDIUMBLOB,
        KEY idx_patient_time (patient_id, study_time), KEY idx_status (status),
        CONSTRAINT fk_study_patient FOREIGN KEY (patient_id) REFERENCES patients (id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE reports (
        id BIGINT PRIMARY KEY, study_id BIGINT NOT NULL UNIQUE, radiologist VARCHAR(32),
        findings MEDIUMTEXT NOT NULL, impression TEXT, created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL,
        CONSTRAINT fk_report_study FOREIGN KEY (study_id) REFERENCES studies (id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE audit_log (
        id BIGINT PRIMARY KEY, occurred_at DATETIME(6) NOT NULL, actor VARCHAR(32) NOT NULL,
        action VARCHAR(32) NOT NULL, entity VARCHAR(32) NOT NULL, entity_id BIGINT NOT NULL,
        detail JSON, KEY idx_time (occurred_at), KEY idx_entity (entity, entity_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE VIEW v_study_summary AS
        SELECT s.id AS study_id, p.patient_no, p.name, s.modality, s.study_time, r.impression
        FROM studies s JOIN patients p ON p.id = s.patient_id
        LEFT JOIN reports r ON r.study_id = s.id""",
    """CREATE TRIGGER trg_report_touch BEFORE UPDATE ON reports FOR EACH ROW
        SET NEW.updated_at = NOW()""",
    """CREATE PROCEDURE patient_study_count(IN pid INT, OUT n INT)
        SELECT COUNT(*) INTO n FROM studies WHERE patient_id = pid""",
)

Rows = Iterator[tuple]


def patient_rows(rng: random.Random, count: int) -> Rows:
    for i in range(1, count + 1):
        yield (
            i,
            f"P{i:09d}",
            chinese_name(rng),
            rng.choice("MF"),
            (EPOCH - timedelta(days=rng.randint(365, 90 * 365))).date(),
            f"1{rng.randint(3000000000, 9999999999)}",
            f"{rng.randint(10**17, 10**18 - 1)}",
            f"北京市东城区帅府园{rng.randint(1, 200)}号",
            EPOCH + timedelta(minutes=i),
        )


def study_rows(rng: random.Random, count: int, patients: int) -> Rows:
    for i in range(1, count + 1):
        size = rng.randint(1000, 5000)
        yield (
            i,
            rng.randint(1, patients),
            f"1.2.840.113619.2.55.3.{i}.{rng.randint(1, 10**6)}",
            rng.choice(MODALITIES),
            rng.choice(BODY_PARTS),
            EPOCH + timedelta(minutes=7 * i),
            rng.choice(("scheduled", "acquired", "reported", "verified")),
            pixels(rng, size, noisy=i % 2 == 0),
        )


def report_rows(rng: random.Random, count: int) -> Rows:
    for i in range(1, count + 1):
        when = EPOCH + timedelta(minutes=7 * i + 45)
        yield (
            i,
            i,
            rng.choice(DOCTORS),
            report_text(rng, 2400),
            rng.choice(IMPRESSIONS),
            when,
            when,
        )


def audit_rows(rng: random.Random, count: int, studies: int) -> Rows:
    for i in range(1, count + 1):
        action = rng.choice(("view", "edit", "sign", "print", "export"))
        detail = {
            "ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "client": rng.choice(("web", "pacs-viewer", "mobile")),
            "fields": rng.sample(("findings", "impression", "status", "body_part"), k=2),
            "note": rng.choice(IMPRESSIONS),
        }
        yield (
            i,
            EPOCH + timedelta(seconds=97 * i),
            rng.choice(DOCTORS),
            action,
            "study",
            rng.randint(1, studies),
            json.dumps(detail, ensure_ascii=False),
        )


def chunks(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_table(target: MySQLTarget, db: str, table: str, rows: Rows) -> int:
    """Bulk insert (PyMySQL turns executemany into multi-row INSERTs) on a fresh connection."""
    conn = target.connect(db)
    n = 0
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
            for batch in chunks(rows, 500):
                marks = ", ".join(["%s"] * len(batch[0]))
                cur.executemany(f"INSERT INTO `{table}` VALUES ({marks})", batch)
                n += len(batch)
    finally:
        conn.close()
    return n


def generate_mysql(target: MySQLTarget, db: str, plan: Plan, seed: int = SEED) -> dict[str, int]:
    """Drop and recreate `db`, then load the four tables in parallel (one connection each)."""
    studies = plan.studies
    patients = max(10, studies // 3)
    audits = studies * 3
    conn = target.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"USE `{db}`")
            for statement in SCHEMA:
                cur.execute(statement)
    finally:
        conn.close()

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}:{name}")

    jobs: dict[str, Callable[[], Rows]] = {
        "patients": lambda: patient_rows(rng("patients"), patients),
        "studies": lambda: study_rows(rng("studies"), studies, patients),
        "reports": lambda: report_rows(rng("reports"), studies),
        "audit_log": lambda: audit_rows(rng("audit_log"), audits, studies),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {t: pool.submit(load_table, target, db, t, make()) for t, make in jobs.items()}
        counts = {table: f.result() for table, f in futures.items()}
    conn = target.connect(db)
    try:
        with conn.cursor() as cur:  # fresh statistics: sizes in information_schema are honest
            cur.execute(f"ANALYZE TABLE {', '.join(f'`{t}`' for t in jobs)}")
            cur.fetchall()
    finally:
        conn.close()
    return counts


# --------------------------------------------------------------------------- Redis


def clear_redis(client: redis.Redis) -> None:
    """Delete our own keys only: the server may hold others' data (or be the broker)."""
    batch = []
    for key in client.scan_iter(match=f"{REDIS_PREFIX}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def session_json(rng: random.Random, i: int) -> str:
    return json.dumps(
        {
            "user_id": rng.randint(1, 5000),
            "name": chinese_name(rng),
            "role": rng.choice(("radiologist", "technician", "clinician", "admin")),
            "login_at": (EPOCH + timedelta(seconds=i)).isoformat(),
            "token": rng.randbytes(48).hex(),
            "perms": rng.sample(range(100), k=20),
        },
        ensure_ascii=False,
    )


def redis_commands(
    rng: random.Random, plan: Plan
) -> Iterator[Callable[[redis.client.Pipeline], None]]:
    """Each yielded callable queues one command on a pipeline."""
    budget = plan.redis_bytes
    p = REDIS_PREFIX
    for i in range(int(budget * 0.35) // 600):  # sessions: strings with TTLs
        value, ttl = session_json(rng, i), rng.randint(86400, 7 * 86400)
        yield lambda pipe, i=i, v=value, t=ttl: pipe.set(f"{p}session:{i:08d}", v, ex=t)
    for i in range(int(budget * 0.25) // 700):  # patient cache: hashes
        fields = {
            "name": chinese_name(rng),
            "patient_no": f"P{i:09d}",
            "gender": rng.choice("MF"),
            "last_study": f"1.2.840.113619.2.55.3.{rng.randint(1, 10**6)}",
            "allergies": rng.choice(("青霉素", "无", "碘对比剂", "磺胺类")),
            "summary": report_text(rng, 300),
        }
        yield lambda pipe, i=i, f=fields: pipe.hset(f"{p}patient:{i:08d}", mapping=f)
    members = int(budget * 0.15) // 60
    for i in range(members):  # worklists: sorted sets, one per modality and day
        key = f"{p}worklist:{rng.choice(MODALITIES)}:{i % 30:02d}"
        member, score = f"study:{i:08d}:{rng.randbytes(8).hex()}", float(i * 60 + rng.random())
        yield lambda pipe, k=key, m=member, s=score: pipe.zadd(k, {m: s})
    for _ in range(int(budget * 0.15) // 300):  # events: one stream
        entry = {
            "type": rng.choice(("study.created", "report.signed", "image.viewed")),
            "study": str(rng.randint(1, 10**6)),
            "user": chinese_name(rng),
            "payload": rng.randbytes(60).hex(),
        }
        yield lambda pipe, e=entry: pipe.xadd(f"{p}events", e)
    for i in range(int(budget * 0.05) // 40):  # recent studies per user: lists
        key, value = f"{p}recent:{i % 500:04d}", f"study:{rng.randint(1, 10**6):08d}"
        yield lambda pipe, k=key, v=value: pipe.rpush(k, v)
    for i in range(int(budget * 0.05) // 40):  # online users and tags: sets
        key, value = f"{p}tags:{i % 200:03d}", f"tag-{rng.randbytes(6).hex()}"
        yield lambda pipe, k=key, v=value: pipe.sadd(k, v)


def generate_redis(url: str, plan: Plan, seed: int = SEED) -> dict[str, int]:
    """Replace our keys with a fresh set, written through pipelines of 2000 commands."""
    client = redis.Redis.from_url(url)
    clear_redis(client)
    rng = random.Random(f"{seed}:redis")
    n = 0
    for batch in chunks(((c,) for c in redis_commands(rng, plan)), 2000):
        pipe = client.pipeline(transaction=False)
        for (command,) in batch:
            command(pipe)
        pipe.execute()
        n += len(batch)
    keys = sum(1 for _ in client.scan_iter(match=f"{REDIS_PREFIX}*", count=5000))
    return {"commands": n, "keys": keys}


# --------------------------------------------------------------------------- volumes

DICOM_PREAMBLE = bytes(128) + b"DICM"


def dicom_file(rng: random.Random, uid: str, noisy: bool) -> bytes:
    """A DICOM-like file of 0.1-1 MB: preamble, a small text header, then pixel data."""
    header = f"(0020,000D) StudyInstanceUID={uid}\n(0008,0060) Modality=CT\n".encode()
    size = rng.randint(100 * 1024, 1024 * 1024)
    return DICOM_PREAMBLE + header + pixels(rng, size - len(header) - 132, noisy)


def upload_files(
    rng: random.Random, total: int, prefix: str, start: int = 0
) -> Iterator[tuple[str, bytes]]:
    written, i = 0, start
    while written < total:
        uid = f"1.2.156.112605.{i}"
        data = dicom_file(rng, uid, noisy=i % 2 == 0)
        yield f"{prefix}{i // 50:04d}/{uid}/IM{i:06d}.dcm", data
        written += len(data)
        i += 1


def model_files(rng: random.Random, total: int) -> Iterator[tuple[str, bytes]]:
    """A few large files: weights are noise; a config and a vocabulary compress well."""
    names = ("lung_nodule_v3.onnx", "fracture_det_v1.onnx", "segmentation.pt", "ocr_zh.bin")
    for k, name in enumerate(names):
        yield f"models/{name}", pixels(rng, total // len(names), noisy=k % 2 == 0)
    yield "models/config.json", json.dumps({"models": names, "seed": SEED}).encode()


def tar_stream(files: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """A tar archive produced file by file, so the whole set is never in memory."""
    mtime = int(EPOCH.timestamp())
    dirs: set[str] = set()
    for name, data in files:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            d = "/".join(parts[:depth])
            if d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                yield info.tobuf(tarfile.GNU_FORMAT)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, mtime
        yield info.tobuf(tarfile.GNU_FORMAT)
        yield data
        yield bytes(-len(data) % tarfile.BLOCKSIZE)
    yield bytes(2 * tarfile.BLOCKSIZE)


class Counter:
    """Counts the files and bytes flowing through a generator."""

    def __init__(self, files: Iterable[tuple[str, bytes]]) -> None:
        self.files, self.bytes, self.source = 0, 0, files

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for name, data in self.source:
            self.files += 1
            self.bytes += len(data)
            yield name, data


def in_volume(client, volume: str, image: str, script: str):
    """A helper container with the volume at /data that ran `script`; the caller removes it."""
    from docker.errors import NotFound

    try:
        client.volumes.get(volume)
    except NotFound:
        client.volumes.create(volume)
    container = client.containers.create(
        image, ["sh", "-c", script], volumes={volume: {"bind": "/data", "mode": "rw"}}
    )
    container.start()
    status = container.wait(timeout=120)
    if status.get("StatusCode"):
        logs = container.logs().decode(errors="replace")
        container.remove(force=True)
        raise RuntimeError(f"helper in volume {volume} failed: {logs.strip()}")
    return container


def write_volume(
    client, volume: str, image: str, files: Iterable[tuple[str, bytes]], script: str
) -> dict[str, int]:
    container = in_volume(client, volume, image, script)
    counter = Counter(files)
    try:
        if not container.put_archive("/data", tar_stream(counter)):
            raise RuntimeError(f"put_archive into volume {volume} failed")
    finally:
        container.remove(force=True)
    return {"files": counter.files, "bytes": counter.bytes}


def fill_volume(client, volume: str, plan: Plan, image: str, seed: int = SEED) -> dict[str, int]:
    """Empty the volume, then write uploads (or models, if its name says so) into it."""
    rng = random.Random(f"{seed}:{volume}")
    if "model" in volume:
        files = model_files(rng, plan.upload_bytes // 4)
    else:
        files = upload_files(rng, plan.upload_bytes, "studies/")
    return write_volume(client, volume, image, files, "rm -rf /data/* /data/.[!.]* ; true")


def add_uploads(
    client, volume: str, percent: float, image: str, seed: int = SEED
) -> dict[str, int]:
    """Add `percent`% new files in a new batch directory (numbered, so each run adds more)."""
    probe = in_volume(client, volume, image, "ls /data/added 2>/dev/null | wc -l; du -sk /data")
    try:
        count_line, du_line = probe.logs().decode().split("\n")[:2]
    finally:
        probe.remove(force=True)
    batch = int(count_line.strip())
    total = int(du_line.split()[0]) * 1024 * percent / 100
    rng = random.Random(f"{seed}:{volume}:added:{batch}")
    files = upload_files(rng, int(total), f"added/{batch:03d}/", start=10**6 * (batch + 1))
    return write_volume(client, volume, image, files, "true")


# --------------------------------------------------------------------------- CLI


def mysql_target(args: argparse.Namespace) -> MySQLTarget:
    return MySQLTarget(
        args.mysql_host,
        args.mysql_port,
        args.mysql_user,
        os.environ.get("XIEHE_MYSQL_PASSWORD", ""),
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 -m bench.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mysql-db")
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--mysql-user", default="root")
    p.add_argument("--redis-url")
    p.add_argument("--volumes", default="", help="comma-separated Docker volume names")
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    p.add_argument("--helper-image", default="xiehe/helper:busybox")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument(
        "--add-uploads-percent",
        type=float,
        help="only add this %% of new files to the uploads volumes",
    )
    return p.parse_args(argv)


def timed(label: str, fn: Callable[[], dict]) -> dict:
    start = time.monotonic()
    result = fn()
    print(f"{label}: {result} in {time.monotonic() - start:.1f}s", flush=True)
    return result


def generate(args: argparse.Namespace) -> dict[str, dict]:
    """Run what the arguments ask for; return the counts per store."""
    plan, out = SIZES[args.size], {}
    volumes = [v.strip() for v in args.volumes.split(",") if v.strip()]
    if args.add_uploads_percent is not None:
        import docker

        client = docker.from_env(timeout=300)
        for v in (v for v in volumes if "model" not in v):
            out[f"volume:{v}"] = timed(
                f"added to {v}",
                lambda v=v: add_uploads(
                    client, v, args.add_uploads_percent, args.helper_image, args.seed
                ),
            )
        return out
    with ThreadPoolExecutor(3) as pool:
        futures = {}
        if args.mysql_db:
            futures["mysql"] = pool.submit(
                timed,
                f"mysql {args.mysql_db}",
                lambda: generate_mysql(mysql_target(args), args.mysql_db, plan, args.seed),
            )
        if args.redis_url:
            futures["redis"] = pool.submit(
                timed, "redis", lambda: generate_redis(args.redis_url, plan, args.seed)
            )
        if volumes:
            futures["volumes"] = pool.submit(lambda: fill_volumes(volumes, plan, args))
        for name, f in futures.items():
            result = f.result()
            out.update(result if name == "volumes" else {name: result})
    return out


def fill_volumes(volumes: list[str], plan: Plan, args: argparse.Namespace) -> dict[str, dict]:
    import docker

    client = docker.from_env(timeout=300)
    return {
        f"volume:{v}": timed(
            f"volume {v}", lambda v=v: fill_volume(client, v, plan, args.helper_image, args.seed)
        )
        for v in volumes
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.monotonic()
    generate(args)
    print(f"data set {args.size!r} ready in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
