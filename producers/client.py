"""The migration gate: a Python API for the XieHe backend's migration scripts.

    from producers.client import backup_before_migration, MigrationGateError

    backup_id = backup_before_migration("0042_add_index")  # raises: do not migrate

It blocks until a backup with reason `pre-migration NAME` is complete and verified and
returns its id.  The CLI equivalent is
`xiehe-backup backup --reason "pre-migration NAME"`, whose exit code is 0 only then.
"""

from __future__ import annotations

from producers import runs
from producers.cli import common
from workers import config
from workers.errors import BackupError, NotFound
from workers.store import manifest as manifests
from workers.store.layout import Tree
from workers.workflows import queues


class MigrationGateError(Exception):
    """No verified backup: the migration must not run."""


class BackupFailed(MigrationGateError):
    """The backup could not be started, or it failed."""


class BackupTimeout(MigrationGateError):
    """The backup did not end within the timeout (it may still be running)."""


def backup_before_migration(name: str, timeout: float = 3600.0) -> str:
    """Back up everything configured, wait until verified, return the backup id."""
    settings = config.load()
    reason = f"pre-migration {name}"
    try:
        run = runs.start_backup(settings, reason)
        backup_id = run["id"]
        state = runs.wait(common.broker(settings), backup_id, timeout, queues(run, settings))
    except BackupError as exc:
        raise BackupFailed(f"{reason}: the backup could not run: {exc}") from exc
    if state is None:
        raise BackupTimeout(
            f"{reason}: backup {backup_id} did not finish within {timeout:.0f}s "
            "(see `xiehe-backup list --all`); do not migrate without it"
        )
    if state.get("status") != "succeeded":
        raise BackupFailed(
            f"{reason}: backup {backup_id} failed in {state.get('step')}: {state.get('error')}"
        )
    _require_verified(Tree(settings.backup_dir), backup_id, reason)
    return backup_id


def _require_verified(tree: Tree, backup_id: str, reason: str) -> None:
    """Check the manifest where this host sees the backups; the run's end vouches otherwise."""
    try:
        status = manifests.read(tree, backup_id).get("status")
    except NotFound:
        return  # the backups live on the workers' host; publish runs only after verify
    if status != "verified":
        raise BackupFailed(f"{reason}: backup {backup_id} is {status}, not verified")
