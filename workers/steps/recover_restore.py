"""When a restore fails: services back as they were, and the way back printed."""

from __future__ import annotations

from workers.context import StepContext
from workers.steps.safety_backup import safety_id
from workers.steps.services import start_services, stopped_by


def recover_restore(run: dict, ctx: StepContext) -> dict:
    started, error = [], None
    if stopped_by(run) and "start_services" not in _succeeded(run):
        try:
            started = start_services(run, ctx)["started"]
        except Exception as exc:  # noqa: BLE001 - reported; the hint below still matters most
            error = str(exc)
    safety = safety_id(run)
    replaced = any(name.startswith("restore_") for name in run["steps"])
    hint = ""
    if safety and replaced:
        hint = f"roll back to the data before this restore: xiehe-backup restore {safety} --yes"
    elif not replaced:
        hint = "nothing was replaced: the live data is unchanged"
    return {
        "started_again": started,
        "start_error": error,
        "safety_backup_id": safety,
        "hint": hint,
    }


def _succeeded(run: dict) -> set[str]:
    return {n for n, rec in run["steps"].items() if rec.get("status") == "succeeded"}
