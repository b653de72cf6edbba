"""Errors a user reads: each names what failed and, where it helps, what to do."""

from __future__ import annotations


class BackupError(Exception):
    """Base of every error the workflow reports as a run's cause."""


class TargetError(BackupError):
    """A target (MySQL, Redis, a volume, Docker) is unreachable or refused an operation."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"{target}: {message}")
        self.target = target


class UnsafeArchive(BackupError):
    """An archive member would land outside its volume, or is a device, or is too big."""


class LockBusy(BackupError):
    """Another run holds a lock on the same target."""


class NotFound(BackupError):
    """An unknown backup id."""
