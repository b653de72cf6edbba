"""docker-compose.yml for real: images built locally (ops/images/build_stack_images.sh, there
is no registry), the stack started with Compose, and a backup run through its worker whose
artifacts land in the bind-mounted ./backups with a manifest that verifies on the host.

The first build debootstraps the base image (a few minutes); later runs reuse it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
import yaml

from tests.support.stack import fill_volume
from workers.steps.verify_backup import verify_all
from workers.store.codec import read_plain

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "ops/images/build_stack_images.sh"
HELPER = "xiehe/helper:busybox"
IMAGES = {
    "XIEHE_MYSQL_IMAGE": "xiehe/mysql:bookworm",
    "XIEHE_REDIS_IMAGE": "xiehe/redis-server:bookworm",
    "XIEHE_DOCKER_PROXY_IMAGE": "xiehe/docker-proxy:bookworm",
}
SERVICES = ["mysql", "redis", "backup-broker", "docker-proxy", "backup-worker"]
WORKER_SECRETS = {"broker_url", "mysql_root_password", "redis_url", "age_recipients"}
WORKER_UID = 10001
SQL = """
CREATE TABLE patients (id INT PRIMARY KEY, name VARCHAR(64)) DEFAULT CHARSET=utf8mb4;
INSERT INTO patients VALUES (1, '张三'), (2, 'Li Si');
"""

pytestmark = pytest.mark.timeout(1800)  # the first debootstrap; cached runs take ~1-2 min


def _compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip(
        "no compose CLI: neither docker-compose (apt-get install docker-compose) nor docker compose"
    )


def _build_images() -> None:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed: cannot build the base image without a registry")
    out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=1500)
    if out.returncode == 0:
        return
    has_base = subprocess.run(
        ["docker", "image", "inspect", "xiehe/base:bookworm"], capture_output=True
    ).returncode
    if has_base != 0:
        pytest.skip(f"debootstrap could not build xiehe/base:bookworm here: {out.stderr[-1500:]}")
    pytest.fail(f"build_stack_images.sh failed:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}")


def _write_secrets(path: Path, recipient: str, tag: str) -> None:
    """Temp copies of ./secrets: 0600, the worker's owned by its uid (they are bind mounts)."""
    password = uuid.uuid4().hex
    secrets = {
        "mysql_root_password": password,
        "redis_password": password[::-1],
        "redis_url": f"redis://:{password[::-1]}@redis:6379/0",
        "broker_url": "redis://backup-broker:6379/0",
        "age_recipients": recipient,
        "flower_basic_auth": f"admin:{tag}",
    }
    path.mkdir(mode=0o700)
    for name, value in secrets.items():
        file = path / name
        file.write_text(value + "\n")
        file.chmod(0o600)
        if name in WORKER_SECRETS:
            os.chown(file, WORKER_UID, WORKER_UID)


def _override(tag: str) -> dict:
    """Unique container and volume names, so the test runs next to anything else."""
    volumes = [f"xiehe_uploads_{tag}", f"xiehe_models_{tag}"]
    return {
        "services": {
            "mysql": {"container_name": f"xiehe-mysql-{tag}"},
            "redis": {"container_name": f"xiehe-redis-{tag}"},
            "backup-worker": {
                "environment": {
                    "XIEHE_REDIS_CONTAINER": f"xiehe-redis-{tag}",
                    "XIEHE_VOLUMES": ",".join(volumes),
                    "XIEHE_HELPER_IMAGE": HELPER,
                }
            },
        },
        "volumes": {"uploads_data": {"name": volumes[0]}, "models_data": {"name": volumes[1]}},
    }


class Compose:
    def __init__(self, cli: list[str], workdir: Path, project: str) -> None:
        self.base = [*cli, "-p", project, "-f", "docker-compose.yml", "-f", "test-override.yml"]
        self.workdir = workdir
        self.env = {**os.environ, **IMAGES}

    def run(self, *args: str, stdin: str | None = None, timeout: int = 300, check: bool = True):
        out = subprocess.run(
            [*self.base, *args],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            logs = self.run("logs", "--no-color", "--tail", "40", check=False).stdout
            pytest.fail(f"{args} failed:\n{out.stdout}\n{out.stderr}\n--- logs ---\n{logs[-6000:]}")
        return out

    def sh(self, service: str, script: str, stdin: str | None = None) -> str:
        """A shell in a service; secrets are read there from /run/secrets, never passed here."""
        return self.run("exec", "-T", service, "sh", "-c", script, stdin=stdin).stdout


@pytest.fixture
def compose_stack(tmp_path, docker_client) -> Iterator[tuple[Compose, Path, dict]]:
    cli = _compose_cli()
    _build_images()
    tag = uuid.uuid4().hex[:10]
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "identity.txt"
    identity_file.write_text(str(identity) + "\n")
    identity_file.chmod(0o600)
    _write_secrets(tmp_path / "secrets", str(identity.to_public()), tag)
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    os.chown(backups, WORKER_UID, WORKER_UID)
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / "test-override.yml").write_text(yaml.safe_dump(_override(tag)))
    stack = Compose(cli, tmp_path, f"xiehet{tag}")
    info = {"tag": tag, "identity": identity_file, "backups": backups}
    try:
        stack.run("up", "-d", "--no-build", *SERVICES, timeout=600)
        yield stack, backups, info
    finally:
        stack.run("down", "-v", "--remove-orphans", "-t", "5", timeout=300, check=False)


def _wait_for_worker(stack: Compose, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ping = ["exec", "-T", "backup-worker", "celery", "-A", "workers", "inspect", "ping"]
        if stack.run(*ping, "--timeout", "5", check=False, timeout=60).returncode == 0:
            return
        time.sleep(2)
    logs = stack.run("logs", "--no-color", "--tail", "60", "backup-worker", check=False).stdout
    pytest.fail(f"the backup-worker never answered a ping:\n{logs[-4000:]}")


def test_stack_starts_and_a_backup_runs_through_it(compose_stack, docker_client):
    stack, backups, info = compose_stack
    tag = info["tag"]
    stack.sh(
        "mysql",
        'MYSQL_PWD="$(cat /run/secrets/mysql_root_password)" '
        "mariadb --default-character-set=utf8mb4 -uroot medical_system",
        stdin=SQL,
    )
    stack.sh(
        "redis",
        'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli set patient:1 zhang',
    )
    fill_volume(docker_client, f"xiehe_uploads_{tag}", HELPER)
    _wait_for_worker(stack)

    out = stack.run("exec", "-T", "backup-worker", "xiehe-backup", "backup", timeout=600)

    manifests = sorted(backups.glob("manifest_*.json"))
    assert len(manifests) == 1, f"{out.stdout}\n{out.stderr}"
    manifest = json.loads(manifests[0].read_text())
    assert manifest["status"] == "verified"
    assert {"mysql", "redis", "volumes"} <= set(manifest["kinds"]), manifest["kinds"]
    backup_id = manifest["id"]
    artifacts = {Path(a["path"]).name: a for a in manifest["artifacts"]}
    data = [
        f"medical_system_{backup_id}.sql.zst.age",
        f"dump_{backup_id}.rdb.zst.age",
        f"xiehe_uploads_{tag}_{backup_id}.tar.zst.age",
    ]
    for name in data:  # encrypted to the age recipients of the secret
        assert name in artifacts and artifacts[name]["encrypted"], sorted(artifacts)
    # the host decrypts and re-checks every artifact against the manifest
    checks = verify_all(backups, manifest["artifacts"], info["identity"])
    assert all(c["content"] == "ok" for c in checks), checks
    dump = b"".join(read_plain(backups / "mysql" / data[0], info["identity"]))
    assert "张三".encode() in dump and b"Li Si" in dump, dump[-3000:]
    # the bind mount keeps the tree's permissions: patients' records
    for path in backups.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path
