"""docker-compose.yml: validated by `docker compose config` when the plugin exists, and
checked for what the deployment promises (services, volumes, secrets only via *_FILE)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SEED_VOLUMES = {
    "mysql_data",
    "mysql_logs",
    "redis_data",
    "redis_logs",
    "uploads_data",
    "models_data",
    "nginx_logs",
}
BACKUP_SERVICES = {"backup-worker", "backup-beat", "backup-events", "binlog-archiver", "flower"}
SECRET_NAME = re.compile(r"PASSWORD|AUTH|RECIPIENTS|BROKER_URL|REDIS_URL")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_config_validates(tmp_path):
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.skip("no docker compose plugin nor docker-compose v1 here: YAML checks only")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in yaml.safe_load(COMPOSE.read_text())["secrets"]:
        (secrets / name).write_text("x\n")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    out = subprocess.run([*command, "config", "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_stack_has_the_seed_services_and_volumes_and_the_backup_services(compose):
    services = compose["services"]
    assert {"mysql", "redis", "backend"} | BACKUP_SERVICES <= set(services)
    assert set(compose["volumes"]) >= SEED_VOLUMES
    assert "mysql_data:/var/lib/mysql" in services["mysql"]["volumes"]
    assert "redis_data:/data" in services["redis"]["volumes"]
    for name in BACKUP_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "ops/Dockerfile"
        assert service["restart"] == "unless-stopped"
        assert "./backups:/backups" in service["volumes"] or name == "flower"
    assert services["binlog-archiver"]["command"] == ["xiehe-backup", "binlog-archiver"]
    assert services["backup-events"]["command"] == ["xiehe-backup", "events"]
    for name in ("mysql", "redis", "backup-worker", "backup-broker", "flower"):
        assert "healthcheck" in services[name], name


def test_secrets_only_through_files_and_encryption_on(compose):
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                pytest.fail(f"{name}: {key} holds a secret in plain environment ({value!r})")
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                secret = str(value).rsplit("/", 1)[1]
                assert secret in service["secrets"], f"{name}: {key} needs secret {secret}"
    worker = compose["services"]["backup-worker"]["environment"]
    assert worker["XIEHE_AGE_RECIPIENTS_FILE"] == "/run/secrets/age_recipients"
    # the Docker socket only reaches the proxy, read-only
    for name, service in compose["services"].items():
        mounts = [m for m in service.get("volumes", []) if "docker.sock" in m]
        assert not mounts or (name == "docker-proxy" and mounts[0].endswith(":ro")), name
