"""Every step of every workflow bound to its function and registered as a Celery task
named `<workflow>.<step>`; the order of the steps is workers/workflows.py's."""

from __future__ import annotations

from workers.celery import app
from workers.ops.alerts import notify_result
from workers.ops.retention import prune_after_backup
from workers.steps import runner
from workers.steps.abandon_backup import abandon_backup
from workers.steps.archive_volumes import archive_volumes
from workers.steps.dump_mysql import dump_mysql
from workers.steps.fetch_backup import fetch_backup
from workers.steps.preflight_backup import preflight_backup
from workers.steps.preflight_restore import preflight_restore
from workers.steps.publish_backup import publish_backup
from workers.steps.recover_restore import recover_restore
from workers.steps.replay_binlog import replay_binlog
from workers.steps.replicate_backup import replicate_backup
from workers.steps.report_restore import report_restore
from workers.steps.restore_targets import restore_mysql, restore_redis, restore_volumes
from workers.steps.safety_backup import safety_backup
from workers.steps.services import start_services, stop_services
from workers.steps.snapshot_redis import snapshot_redis
from workers.steps.verify_backup import verify_staged
from workers.steps.verify_restore import verify_restore
from workers.workflows import ORDER

STEPS = {
    "backup": {
        "preflight": preflight_backup,
        "dump_mysql": dump_mysql,
        "snapshot_redis": snapshot_redis,
        "archive_volumes": archive_volumes,
        "verify": verify_staged,
        "publish": publish_backup,
        "replicate": replicate_backup,
        "prune": prune_after_backup,
        "notify": notify_result,
    },
    "restore": {
        "fetch": fetch_backup,
        "preflight": preflight_restore,
        "stop_services": stop_services,
        "safety_backup": safety_backup,
        "restore_mysql": restore_mysql,
        "replay_binlog": replay_binlog,
        "restore_redis": restore_redis,
        "restore_volumes": restore_volumes,
        "start_services": start_services,
        "verify": verify_restore,
        "report": report_restore,
        "notify": notify_result,
    },
}
ON_FAILURE = {"backup": abandon_backup, "restore": recover_restore}


def _register(workflow: str, name: str) -> None:
    fn, on_failure = STEPS[workflow][name], ON_FAILURE[workflow]

    @app.task(name=f"{workflow}.{name}", bind=True)
    def step(self, run: dict | list[dict]) -> dict:
        return runner.execute(name, fn, run, task=self, on_failure=on_failure)


for _workflow, _steps in ORDER.items():
    for _name, _kind in _steps:  # a step in the order without a function fails here, at start
        _register(_workflow, _name)
