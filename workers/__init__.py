"""xiehe-backup workers: `celery -A workers worker|beat|flower` finds `app` here."""

from workers.celery import app

__all__ = ["app"]
