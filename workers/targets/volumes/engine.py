"""A volume through the Docker engine: what it is, who uses it, helper containers
that mount it, and tar streams of it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import requests
import urllib3
from docker.errors import DockerException, ImageNotFound, NotFound

from workers.errors import TargetError
from workers.store.codec import CHUNK
from workers.targets.docker_engine import containers_using_volume, start_containers, stop_containers
from workers.targets.tar_safety import ROOT

SOURCE = "/source"  # where a helper mounts the volume read-only
TARGET = "/target"  # where a helper mounts it read-write
HELPER_TIMEOUT = 3600  # seconds for the wipe step of a restore, or a listing
# get_archive streams straight from urllib3, whose errors requests does not wrap there
ENGINE_ERRORS = (DockerException, requests.RequestException, urllib3.exceptions.HTTPError)


def check(engine: docker.DockerClient, name: str) -> dict:
    """What the volume is and which running containers use it."""
    return {**inspect_volume(engine, name), "in_use_by": running_users(engine, name)}


def inspect_volume(engine: docker.DockerClient, name: str) -> dict:
    """Name, mountpoint, driver (and whether it has options), labels; TargetError when it
    does not exist."""
    try:
        volume = engine.volumes.get(name)
    except NotFound:
        raise TargetError(f"volume:{name}", "does not exist") from None
    except ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot inspect: {exc}") from None
    attrs = volume.attrs
    return {
        "name": name,
        "mountpoint": attrs.get("Mountpoint"),
        "driver": attrs.get("Driver"),
        # whether the driver has options (type, device, o), never their values: a CIFS
        # volume's hold its password, and this record reaches the run's journal
        "driver_options": bool(attrs.get("Options")),
        "labels": attrs.get("Labels") or {},
    }


def running_users(engine: docker.DockerClient, name: str) -> list[str]:
    """Names of the running containers that mount the volume."""
    return [c["name"] for c in containers_using_volume(engine, name) if c["running"]]


@contextmanager
def quiesced(engine: docker.DockerClient, name: str, stop_running: bool) -> Iterator[list]:
    """No running container writes the volume inside the block: refuse, or stop and restart
    (the block gets the containers stopped)."""
    users = running_users(engine, name)
    if users and not stop_running:
        raise TargetError(
            f"volume:{name}",
            f"in use by running container(s) {', '.join(users)}; a live copy of a database "
            "is not consistent: stop them first or pass stop_running=True",
        )
    stopped = stop_containers(engine, users)
    try:
        yield stopped
    finally:
        start_containers(engine, stopped)


@contextmanager
def helper_container(
    engine: docker.DockerClient, image: str, name: str, writable: bool, command: list[str] | None
) -> Iterator:
    """A helper container mounting the volume; always removed, also on error."""
    mount = TARGET if writable else SOURCE
    try:
        container = engine.containers.create(
            image,
            command=command or ["true"],
            name=f"xiehe-helper-{uuid.uuid4().hex[:12]}",
            volumes={name: {"bind": mount, "mode": "rw" if writable else "ro"}},
            network_disabled=True,
            labels={"xiehe.helper": name},
        )
    except ImageNotFound:
        raise TargetError(
            "docker",
            f"helper image {image!r} not found: build it with ops/images/build_helper_image.sh",
        ) from None
    except ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot create a helper container: {exc}") from None
    try:
        yield container
    finally:
        container.remove(force=True)


def volume_tar(container, name: str, path: str = ROOT) -> Iterator[bytes]:
    """The engine's tar of the mounted volume (members ./relative/path), or of one path in
    it (members named from its last component)."""
    try:
        chunks, _ = container.get_archive(f"{SOURCE}/{path}", chunk_size=CHUNK)
        yield from chunks
    except ENGINE_ERRORS as exc:
        raise TargetError(f"volume:{name}", f"cannot read through the engine: {exc}") from None


def ensure_volume(engine: docker.DockerClient, name: str, labels: dict | None) -> bool:
    """Create the volume if it is gone (after `compose down -v`); True if created."""
    try:
        engine.volumes.get(name)
        return False
    except NotFound:
        engine.volumes.create(name=name, labels=labels or {})
        return True


def run_helper(container, name: str) -> None:
    """Run the helper's command to its end; TargetError (with its log's tail) unless it exits 0."""
    container.start()
    status = container.wait(timeout=HELPER_TIMEOUT).get("StatusCode")
    if status != 0:
        tail = container.logs().decode(errors="replace")[-500:]
        raise TargetError(f"volume:{name}", f"helper exited with {status}: {tail}")
