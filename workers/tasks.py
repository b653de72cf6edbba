"""Every step of every workflow registered as a Celery task named `<workflow>.<step>`."""

from __future__ import annotations

from workers.celery import app
from workers.steps import runner
from workers.workflows import WORKFLOWS

_TASKS: dict[str, object] = {}


def _register(workflow: str, name: str, fn, on_failure) -> None:
    @app.task(name=f"{workflow}.{name}", bind=True)
    def step(self, run: dict) -> dict:
        return runner.execute(name, fn, run, task=self, on_failure=on_failure)

    _TASKS[f"{workflow}.{name}"] = step


for _workflow, (_steps, _on_failure) in WORKFLOWS.items():
    for _name, _fn, _kind in _steps:
        _register(_workflow, _name, _fn, _on_failure)


def task_for(workflow: str, step: str):
    return _TASKS[f"{workflow}.{step}"]
