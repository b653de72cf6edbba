"""The Docker engine: a checked client, and stopping/starting the containers we must pause."""

from __future__ import annotations

import functools
import os

import docker
from docker.errors import DockerException, NotFound

from workers.errors import TargetError

STOP_TIMEOUT = 60  # seconds a database gets to shut down cleanly before SIGKILL


def client(docker_url: str | None = None) -> docker.DockerClient:
    """A client that has answered a ping; TargetError("docker", ...) says why it cannot."""
    where = docker_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        engine = _client(docker_url, os.environ.get("DOCKER_HOST"), os.getpid())
        engine.ping()
    except DockerException as exc:
        raise TargetError(
            "docker", f"cannot reach the engine at {where}: {exc}. Is dockerd running?"
        ) from None
    return engine


@functools.cache
def _client(docker_url: str | None, _host: str | None, _pid: int) -> docker.DockerClient:
    """One client per engine address and process (a forked child never shares its parent's
    connections): a step used to make its own, negotiating the API version and connecting
    anew.  Its pool reconnects after an engine restart; the caller's ping says whether the
    engine answers now."""
    return docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()


def _container(engine: docker.DockerClient, name: str):
    try:
        return engine.containers.get(name)
    except NotFound:
        raise TargetError(f"container:{name}", "does not exist") from None


def stop_containers(
    engine: docker.DockerClient, names: list[str] | tuple[str, ...], timeout: int = STOP_TIMEOUT
) -> list[str]:
    """Stop those that run; returns only the ones it stopped, the ones to start again."""
    containers = [_container(engine, name) for name in names]  # all known before any stops
    stopped: list[str] = []
    try:
        for container in containers:
            if container.status == "running":
                container.stop(timeout=timeout)
                stopped.append(container.name)
    except DockerException as exc:
        start_containers(engine, stopped)
        raise TargetError(f"container:{container.name}", f"cannot stop: {exc}") from None
    return stopped


def start_containers(engine: docker.DockerClient, names: list[str] | tuple[str, ...]) -> None:
    """Start every named container; tries them all and reports every failure at once."""
    failed = []
    for name in names:
        try:
            _container(engine, name).start()
        except (DockerException, TargetError) as exc:
            failed.append(f"{name} ({exc})")
    if failed:
        raise TargetError("docker", f"could not start again: {', '.join(failed)}")


def containers_using_volume(engine: docker.DockerClient, volume: str) -> list[dict]:
    """Every container (running or not) that mounts the volume."""
    # The engine's filter also matches a mount *destination* of that name: confirm by mounts.
    found = engine.containers.list(all=True, filters={"volume": volume})
    return [
        {"id": c.id, "name": c.name, "status": c.status, "running": c.status == "running"}
        for c in found
        if any(m.get("Type") == "volume" and m.get("Name") == volume for m in c.attrs["Mounts"])
    ]
