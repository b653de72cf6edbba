"""xiehe-backup workers: `celery -A workers worker|beat|flower` finds `app` here.

The app is imported on first use (PEP 562), so code that only needs a target or the
config (the CLI, a benchmark's child process) does not pay for importing Celery."""

from __future__ import annotations

__all__ = ["app"]


def __getattr__(name: str):
    if name == "app":
        from workers.celery import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
