"""MySQL target against the real MariaDB at 127.0.0.1:3306: dump, destroy, restore, compare."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pymysql
import pytest

from tests.support.mariadb import MariaDB
from workers.config import MySQLSettings
from workers.errors import TargetError
from workers.steps import verify_restore
from workers.store.codec import Codec
from workers.targets import mysql

ZSTD = Codec()
ROOT = MySQLSettings("127.0.0.1", 3306, "root", "", (), "medical_system", 3)
BIG_ROWS = 50_000
SCHEMA = [
    """CREATE TABLE patient (
        id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100), note TEXT, born DATETIME(6),
        balance DECIMAL(20,6), meta JSON, flags BIT(5), photo BLOB, score DOUBLE,
        seen TIMESTAMP NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE study (
        id INT PRIMARY KEY AUTO_INCREMENT, patient_id INT NOT NULL, descr VARCHAR(200),
        twice INT AS (id * 2) VIRTUAL,
        FOREIGN KEY (patient_id) REFERENCES patient (id)) ENGINE=InnoDB""",
    "CREATE TABLE big (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64), n BIGINT) ENGINE=InnoDB",
    "CREATE TABLE legacy (k VARCHAR(20) PRIMARY KEY, v VARBINARY(20)) ENGINE=MyISAM",
    "CREATE TABLE empty_one (id INT PRIMARY KEY) ENGINE=InnoDB",
    f"INSERT INTO big (v, n) SELECT CONCAT('row-', seq), seq * 1000003 FROM seq_1_to_{BIG_ROWS}",
    "INSERT INTO legacy VALUES ('a', 0x00FF27), ('b', NULL), ('c', '')",
    "CREATE VIEW v_patient AS SELECT id, name FROM patient WHERE id > 0",
    "CREATE VIEW a_names AS SELECT name FROM v_patient",  # a view on a view, sorted first
    """CREATE TRIGGER study_descr BEFORE INSERT ON study FOR EACH ROW
        SET NEW.descr = COALESCE(NEW.descr, 'none')""",
    """CREATE PROCEDURE count_patients(OUT n INT)
        BEGIN
          SELECT COUNT(*) INTO n FROM patient; -- a comment; with a semicolon
        END""",
    "CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2",
    "CREATE EVENT purge_big ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM big WHERE id < 0",
]
NAMES = ["张三", "李四 😀🏥", 'O\'Brien \\ "quoted"', "line\nbreak\r\ttab", "", None]


def sql(query: str, database: str | None = None, args: tuple = ()) -> list[tuple]:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=database, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute(query, args or None)
            result = list(cur.fetchall())
        conn.commit()
        return result
    finally:
        conn.close()


def fill_patients(database: str, count: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=database, charset="utf8mb4")
    rng = __import__("random").Random(7)
    with conn.cursor() as cur:
        for i in range(count):
            photo = bytes([0, 39, 34, 92, 10, 13, 26]) + os.urandom(rng.randint(0, 3000))
            cur.execute(
                "INSERT INTO patient (name, note, born, balance, meta, flags, photo, score, seen)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    NAMES[i % len(NAMES)],
                    None if i % 3 else "备注 note ✓ " * (i % 50),
                    None if i % 4 == 0 else f"20{i % 100:02d}-01-02 03:04:05.{i:06d}",
                    None if i % 5 == 0 else f"{i}.{i % 1000000:06d}",
                    None if i % 2 else f'{{"k": {i}, "s": "值\\n\\"x\\""}}',
                    i % 32,
                    None if i % 7 == 0 else photo,
                    i / 7,
                    None if i % 2 else "2024-03-31 01:30:00",
                ),
            )
            cur.execute("INSERT INTO study (patient_id, descr) VALUES (%s, NULL)", (i + 1,))
    conn.commit()
    conn.close()


def drop(*databases: str) -> None:
    for db in databases:
        sql(f"DROP DATABASE IF EXISTS `{db}`")


@pytest.fixture
def names():
    """Unique database names for one test; dropped at the end."""
    tag = uuid.uuid4().hex[:8]
    made = {k: f"t_{k}_{tag}" for k in ("src", "hand", "copy", "other")}
    yield made
    drop(*made.values())


@pytest.fixture
def source(names) -> str:
    db = names["src"]
    sql(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    for statement in SCHEMA:
        sql(statement, db)
    fill_patients(db, 300)
    return db


def dump(tmp_path: Path, settings: MySQLSettings, codec: Codec = ZSTD) -> dict:
    written = []
    result = mysql.dump(settings, tmp_path / "out", "b1", codec, written.append)
    assert sum(written) == sum(a["plain_bytes"] for a in result["artifacts"][:-1])
    return result


def artifact_of(tmp_path: Path, result: dict, db: str) -> Path:
    (art,) = [a for a in result["artifacts"] if a.get("source") == db]
    return tmp_path / "out" / art["file"]


def load_by_hand(artifact: Path, source: str, target: str) -> None:
    """What an operator does: decompress, point the two header lines elsewhere, pipe."""
    rename = (
        f"s/^CREATE DATABASE IF NOT EXISTS `{source}`/CREATE DATABASE IF NOT EXISTS `{target}`/;"
        f"s/^USE `{source}`;$/USE `{target}`;/"
    )
    subprocess.run(
        f"zstd -dc '{artifact}' | sed -e '{rename}' | mariadb -h127.0.0.1 -uroot",
        shell=True,
        check=True,
    )


def all_rows(database: str, table: str) -> list[tuple]:
    return sql(f"SELECT * FROM `{table}` ORDER BY 1", database)


def checksum_table(database: str, table: str) -> int:
    return sql(f"CHECKSUM TABLE `{database}`.`{table}`")[0][1]


def test_check_describes_server(source):
    info = mysql.check(ROOT)
    assert info["flavor"] == "mariadb"
    assert source in info["databases"]
    assert not {"mysql", "sys", "information_schema"} & set(info["databases"])


def test_wrong_password_is_a_clear_error():
    with pytest.raises(TargetError, match="wrong user or password") as err:
        mysql.check(replace(ROOT, password="not-the-password-42"))
    assert "not-the-password-42" not in str(err.value)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(TargetError, match="cannot reach the server at 127.0.0.1:1"):
        mysql.check(replace(ROOT, port=1))


def test_dump_loads_by_hand_and_restores_under_other_names(tmp_path, names, source):
    result = dump(tmp_path, replace(ROOT, databases=(source,)))
    assert result["snapshot"] == "shared-ftwrl"
    recorded = result["databases"][source]
    assert recorded["tables"] == mysql.checksums(ROOT, source)
    assert recorded["tables"]["big"]["rows"] == BIG_ROWS
    assert recorded["views"] == ["a_names", "v_patient"]
    assert recorded["routines"] == ["FUNCTION twice", "PROCEDURE count_patients"]
    assert (recorded["triggers"], recorded["events"]) == (["study_descr"], ["purge_big"])
    artifact = artifact_of(tmp_path, result, source)
    assert artifact.name == f"{source}_b1.sql.zst"
    assert artifact.stat().st_mode & 0o777 == 0o600
    index = tmp_path / "out" / "full_backup_b1.list"
    assert artifact.name in index.read_text().splitlines()
    assert index.stat().st_mode & 0o777 == 0o600

    load_by_hand(artifact, source, names["hand"])
    mysql.restore(ROOT, artifact, names["copy"], None, lambda n: None)
    for copy in (names["hand"], names["copy"]):
        assert mysql.checksums(ROOT, copy) == recorded["tables"]
        assert mysql.objects(ROOT, copy) == mysql.objects(ROOT, source)
        for table in ("patient", "study", "legacy"):
            assert all_rows(copy, table) == all_rows(source, table)
        for table in ("patient", "big", "legacy", "empty_one"):  # not study: see checksums()
            assert checksum_table(copy, table) == checksum_table(source, table)
        # The objects work and point at the copy, not at the source.
        assert sql("SELECT COUNT(*) FROM a_names", copy) == [(300,)]
        assert sql("SELECT twice(21)", copy) == [(42,)]
        assert source not in sql("SHOW CREATE VIEW v_patient", copy)[0][1]
        sql("INSERT INTO study (patient_id) VALUES (1)", copy)
        assert sql("SELECT descr FROM study ORDER BY id DESC LIMIT 1", copy) == [("none",)]
    sql(f"DELETE FROM `{names['copy']}`.big")  # the copy is independent of the source
    assert sql("SELECT COUNT(*) FROM big", source) == [(BIG_ROWS,)]
    # A copy under another name must not run the original's scheduled jobs.
    assert sql(
        "SELECT STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
        args=(names["copy"],),
    ) == [("DISABLED",)]


def test_restore_over_the_same_name_replaces_it(tmp_path, source):
    result = dump(tmp_path, replace(ROOT, databases=(source,), parallel=1))
    expected = result["databases"][source]["tables"]
    sql("DELETE FROM study", source)
    sql("DROP VIEW a_names", source)
    mysql.restore(ROOT, artifact_of(tmp_path, result, source), source, None, lambda n: None)
    assert mysql.checksums(ROOT, source) == expected
    assert "a_names" in mysql.objects(ROOT, source)["views"]


def test_truncated_artifact_is_refused_before_anything_is_dropped(tmp_path, names, source):
    result = dump(tmp_path, replace(ROOT, databases=(source,)), Codec("none"))
    artifact = artifact_of(tmp_path, result, source)
    text = artifact.read_bytes()
    cut_at_line = tmp_path / "cut.sql"
    cut_at_line.write_bytes(text[: text.rindex(b"\nINSERT INTO") + 1])  # ends on a whole line
    with pytest.raises(TargetError, match="truncated"):
        mysql.restore(ROOT, cut_at_line, source, None, lambda n: None)
    assert sql("SELECT COUNT(*) FROM big", source) == [(BIG_ROWS,)]  # untouched

    zst = artifact_of(tmp_path, dump(tmp_path, replace(ROOT, databases=(source,))), source)
    cut_frame = tmp_path / "cut.sql.zst"
    for size in (zst.stat().st_size // 2, zst.stat().st_size - 3, 0):  # the last checksum
        cut_frame.write_bytes(zst.read_bytes()[:size])
        with pytest.raises(TargetError, match="truncated"):
            mysql.restore(ROOT, cut_frame, source, None, lambda n: None)
    assert mysql.checksums(ROOT, source) == result["databases"][source]["tables"]


def test_counts_describe_the_dump_while_clients_write(tmp_path, names, source):
    stop = threading.Event()
    inserted = [0]

    def writer() -> None:
        conn = pymysql.connect(host="127.0.0.1", user="root", database=source, autocommit=True)
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO big (v, n) VALUES ('live', 1), ('live', 2)")
                cur.execute("UPDATE patient SET balance = balance + 1 WHERE id = 1")
                inserted[0] += 2
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = dump(tmp_path, replace(ROOT, databases=(source,)))
    finally:
        stop.set()
        thread.join()
    assert inserted[0] > 0
    recorded = result["databases"][source]["tables"]
    mysql.restore(ROOT, artifact_of(tmp_path, result, source), names["copy"], None, lambda n: None)

    assert mysql.checksums(ROOT, names["copy"]) == recorded
    assert sql("SELECT COUNT(*) FROM big", names["copy"]) == [(recorded["big"]["rows"],)]


@pytest.fixture
def users(names, source):
    """A least-privilege backup user, one without RELOAD, and a restore user."""
    tag = names["src"][-8:]
    made = {k: f"xb_{k}_{tag}" for k in ("backup", "noreload", "restore")}
    pw = uuid.uuid4().hex
    for user in made.values():
        sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'")
    on_db = "SELECT, SHOW VIEW, TRIGGER, EVENT"
    sql(f"GRANT {on_db} ON `{source}`.* TO '{made['backup']}'@'%'")
    sql(f"GRANT RELOAD, BINLOG MONITOR ON *.* TO '{made['backup']}'@'%'")
    sql(f"GRANT {on_db} ON `{source}`.* TO '{made['noreload']}'@'%'")
    for user in ("backup", "noreload"):  # without it routines are invisible, not an error
        sql(f"GRANT SELECT ON mysql.proc TO '{made[user]}'@'%'")
    sql(f"GRANT ALL PRIVILEGES ON `{names['copy']}`.* TO '{made['restore']}'@'%'")
    sql(f"GRANT SET USER ON *.* TO '{made['restore']}'@'%'")
    yield {k: replace(ROOT, user=u, password=pw) for k, u in made.items()}
    for user in made.values():
        sql(f"DROP USER IF EXISTS '{user}'@'%'")


def test_least_privilege_users(tmp_path, names, source, users):
    assert mysql.check(users["backup"])["databases"] == [source]
    shared = dump(tmp_path / "shared", users["backup"])
    assert shared["snapshot"] == "shared-ftwrl"
    single = dump(tmp_path / "single", users["noreload"])
    assert single["snapshot"] == "single-connection"
    expected = mysql.checksums(ROOT, source)
    assert shared["databases"][source]["tables"] == expected
    assert single["databases"][source]["tables"] == expected
    artifact = artifact_of(tmp_path / "single", single, source)
    mysql.restore(users["restore"], artifact, names["copy"], None, lambda n: None)
    assert mysql.checksums(ROOT, names["copy"]) == expected
    assert mysql.objects(ROOT, names["copy"]) == mysql.objects(ROOT, source)


RELATED = [
    """CREATE TABLE ward (
        code VARCHAR(20) PRIMARY KEY, title VARCHAR(100) NOT NULL, UNIQUE KEY uk_title (title)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE bed (
        id INT PRIMARY KEY, ward_code VARCHAR(20) NOT NULL, label VARCHAR(600),
        KEY idx_label (label(20)), KEY idx_ward_id (ward_code, id),
        CONSTRAINT fk_bed_ward FOREIGN KEY (ward_code) REFERENCES ward (code)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE stay (
        id BIGINT PRIMARY KEY, bed_id INT NOT NULL, note TEXT, FULLTEXT KEY ft_note (note),
        CONSTRAINT fk_stay_bed FOREIGN KEY (bed_id) REFERENCES bed (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "INSERT INTO ward SELECT CONCAT('W-', seq), CONCAT('病区 ', seq) FROM seq_1_to_300",
    """INSERT INTO bed SELECT seq, CONCAT('W-', 1 + seq % 300), REPEAT(CONCAT('床', seq), 60)
        FROM seq_1_to_8000""",
    "INSERT INTO stay SELECT seq, 1 + seq % 8000, REPEAT('住院 stay ', 40) FROM seq_1_to_12000",
    """CREATE TRIGGER bed_count AFTER INSERT ON bed FOR EACH ROW
        UPDATE ward SET title = CONCAT(title, '+') WHERE code = NEW.ward_code""",
]


def test_parallel_load_of_related_tables_with_secondary_indexes(tmp_path, names):
    """Rows of several tables (several statements each) load over 3 connections at once:
    the copy has the same rows, the same keys and constraints, and no trigger fired."""
    db = names["src"]
    sql(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    for statement in RELATED:
        sql(statement, db)
    settings = replace(ROOT, databases=(db,), parallel=3)
    result = dump(tmp_path, settings)
    recorded = result["databases"][db]["tables"]
    artifact = artifact_of(tmp_path, result, db)
    plain = subprocess.run(["zstd", "-dc", str(artifact)], capture_output=True, check=True)
    assert plain.stdout.count(b"\nINSERT INTO `stay`") > 2  # spread over the connections

    mysql.restore(settings, artifact, names["copy"], None, lambda n: None)
    load_by_hand(artifact, db, names["hand"])
    for copy in (names["copy"], names["hand"]):
        assert mysql.checksums(ROOT, copy) == recorded
        for table in ("ward", "bed", "stay"):
            assert sql(f"SHOW CREATE TABLE `{table}`", copy) == sql(
                f"SHOW CREATE TABLE `{table}`", db
            )
        assert sql("SELECT COUNT(*) FROM ward WHERE title LIKE '%+'", copy) == [(0,)]
        with pytest.raises(pymysql.err.IntegrityError):  # the constraints hold again
            sql("INSERT INTO stay (id, bed_id) VALUES (99999, 424242)", copy)
        sql("DELETE FROM bed WHERE id = 1", copy)  # ON DELETE CASCADE survived
        assert sql("SELECT COUNT(*) FROM stay WHERE bed_id = 1", copy) == [(0,)]


def test_failed_row_names_the_table_never_the_values(tmp_path, names):
    db = names["src"]
    sql(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    sql("CREATE TABLE secret (patient_no VARCHAR(40) PRIMARY KEY, n INT)", db)
    sql("INSERT INTO secret VALUES ('P-王五-0042', 1), ('P-other', 2)", db)
    result = dump(tmp_path, replace(ROOT, databases=(db,)), Codec("none"))
    artifact = artifact_of(tmp_path, result, db)
    text = artifact.read_bytes()
    insert = text[text.index(b"INSERT INTO `secret`") :].split(b"\n", 1)[0] + b"\n"
    broken = tmp_path / "broken.sql"
    broken.write_bytes(text.replace(insert, insert + insert))  # every key twice
    with pytest.raises(TargetError) as err:
        mysql.restore(replace(ROOT, parallel=2), broken, names["copy"], None, lambda n: None)
    message = str(err.value)
    assert "`secret`" in message and "Duplicate entry" in message
    assert "王五" not in message and "P-other" not in message


def test_a_backup_made_before_rendering_2_is_checked_as_it_was_rendered(source):
    """Backups record how their rows were rendered; one from before has no record and was
    rendered with hex blobs and server-escaped newlines: a restore of it is checked so."""
    old = mysql.checksums(ROOT, source, rendering=1)
    assert old != mysql.checksums(ROOT, source)  # blobs and newlines render otherwise now
    manifest = {"mysql": {"databases": {source: {"tables": old}}}}  # no "rendering" key
    ctx = SimpleNamespace(settings=SimpleNamespace(mysql=ROOT))
    assert verify_restore.mysql_mismatches(ctx, manifest, [source]) == []
    manifest["mysql"]["databases"][source]["rendering"] = 2
    mismatches = verify_restore.mysql_mismatches(ctx, manifest, [source])
    tables = {m.split(" table ")[1].split(":")[0] for m in mismatches}
    assert tables == {"patient", "legacy"}  # the tables with blobs or newlines


@pytest.fixture(scope="module")
def tls_only_server(tmp_path_factory):
    """A private MariaDB that refuses every connection not encrypted with TLS."""
    work = tmp_path_factory.mktemp("tls-mariadb")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")]
        + ["-subj", "/CN=xiehe-test"],
        check=True,
        capture_output=True,
    )
    server = MariaDB(
        work / "server",
        "--skip-log-bin",
        f"--ssl-cert={work / 'cert.pem'}",
        f"--ssl-key={work / 'key.pem'}",
        "--require-secure-transport=ON",
    )
    yield server
    server.stop()


def test_dump_over_tls_to_localhost_when_the_server_requires_it(tmp_path, tls_only_server):
    """Every connection of a dump (the lock's and the row readers') is encrypted when the
    server offers TLS: this server refuses the others.  "localhost" is this server's TCP
    port: the C client would otherwise take the Unix socket of the machine's own server."""
    server = tls_only_server
    server.sql("CREATE DATABASE tls_src CHARACTER SET utf8mb4")
    conn = server.connect("tls_src", charset="utf8mb4")
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cur.fetchone()[1], "the test server must be speaking TLS"
        for statement in SCHEMA:
            cur.execute(statement)
        cur.execute("INSERT INTO patient (name, photo) VALUES (%s, %s)", ("张三", b"\0'\\\n"))
    conn.close()
    settings = replace(ROOT, host="localhost", port=server.port, databases=("tls_src",))

    result = dump(tmp_path, settings)
    assert result["snapshot"] == "shared-ftwrl"  # the parallel row readers were used
    artifact = artifact_of(tmp_path, result, "tls_src")
    mysql.restore(settings, artifact, "tls_copy", None, lambda n: None)
    recorded = result["databases"]["tls_src"]["tables"]
    assert recorded["big"]["rows"] == BIG_ROWS
    assert mysql.checksums(settings, "tls_copy") == recorded == mysql.checksums(settings, "tls_src")


def test_tables_dumped_side_by_side_interleave_largest_first(tmp_path, names):
    """Two tables of 12 MiB each, on two connections: their statements are written as
    each connection makes them, interleaved (with the tables read in order through bounded
    queues, one table's rows all came before the other's: the second connection waited),
    each table's DDL before its rows, largest tables first; the dump still loads whole."""
    db = names["src"]
    sql(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    for table in ("left_one", "right_one"):
        sql(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(700)) ENGINE=InnoDB", db)
        sql(f"INSERT INTO {table} SELECT seq, REPEAT(MD5(seq), 20) FROM seq_1_to_18000", db)
    sql("CREATE TABLE a_small (id INT PRIMARY KEY) ENGINE=InnoDB", db)
    sql("INSERT INTO a_small SELECT seq FROM seq_1_to_10", db)
    sql("ANALYZE TABLE a_small, left_one, right_one", db)  # the sizes the order is taken from
    settings = replace(ROOT, databases=(db,), parallel=2)
    result = dump(tmp_path, settings)
    artifact = artifact_of(tmp_path, result, db)
    plain = subprocess.run(["zstd", "-dc", str(artifact)], capture_output=True, check=True)
    statements = [s for s in plain.stdout.split(b";\n") if s.startswith(b"INSERT INTO")]
    tables = [s.split(b"`")[1].decode() for s in statements]
    runs = [t for i, t in enumerate(tables) if i == 0 or tables[i - 1] != t]
    assert tables.count("left_one") >= 10 and tables.count("right_one") >= 10
    assert len(runs) > 3, runs  # not one table's rows, then the other's
    ddl = [plain.stdout.index(f"CREATE TABLE `{t}`".encode()) for t in tables]
    assert all(d < plain.stdout.index(s) for d, s in zip(ddl, statements, strict=True))
    created = plain.stdout.index(b"CREATE TABLE `a_small`")
    assert plain.stdout.index(b"CREATE TABLE `left_one`") < created
    assert plain.stdout.index(b"CREATE TABLE `right_one`") < created
    mysql.restore(settings, artifact, names["copy"], None, lambda n: None)
    load_by_hand(artifact, db, names["hand"])
    for copy in (names["copy"], names["hand"], db):
        assert mysql.checksums(ROOT, copy) == result["databases"][db]["tables"]
