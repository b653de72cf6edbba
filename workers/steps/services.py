"""Stop the application services that write to the targets, and start them again."""

from __future__ import annotations

from workers.context import StepContext
from workers.targets import docker_engine


def stop_services(run: dict, ctx: StepContext) -> dict:
    names = ctx.settings.stop_containers
    if not names:
        return {"stopped": [], "note": "XIEHE_STOP_CONTAINERS is empty: no service stopped"}
    return {"stopped": docker_engine.stop_containers(ctx.docker, names)}


def stopped_by(run: dict) -> list[str]:
    record = run["steps"].get("stop_services") or {}
    return (record.get("result") or {}).get("stopped", [])


def start_services(run: dict, ctx: StepContext) -> dict:
    """Start only what the restore stopped: a service that was down stays down."""
    names = stopped_by(run)
    if names:
        docker_engine.start_containers(ctx.docker, names)
    return {"started": names}
