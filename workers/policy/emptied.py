"""What held data in the last verified backup and holds none now.

A volume whose files are all gone (a NAS share that failed to mount, an `rm -rf` in the
wrong place) or a database whose rows are all gone is backed up faithfully, empty: that is
what is there.  But it must not pass as a quiet success while retention lets the good
backups age out behind it: the backup's manifest and backup_info carry the warning, and it
is notified whatever XIEHE_NOTIFY_ON_SUCCESS says.  Pure: manifests in, warnings out.
"""

from __future__ import annotations


def _rows(database: dict | None) -> int:
    tables = (database or {}).get("tables") or {}
    return sum(table.get("rows") or 0 for table in tables.values())


def emptied(previous: dict | None, current: dict) -> list[str]:
    """Warnings for what the previous verified backup (a manifest) held and `current` (the
    manifest being published) no longer does."""
    if not previous:
        return []
    warnings = []
    volumes_before = previous.get("volumes") or {}
    for name, counts in sorted((current.get("volumes") or {}).items()):
        before = volumes_before.get(name) or {}
        if before.get("files") and not counts.get("files"):
            warnings.append(
                f"volume {name} holds no files; it held {before['files']} "
                f"({before.get('bytes', 0)} bytes) in backup {previous['id']}"
            )
    databases_before = (previous.get("mysql") or {}).get("databases") or {}
    for name, database in sorted(((current.get("mysql") or {}).get("databases") or {}).items()):
        rows_before = _rows(databases_before.get(name))
        if rows_before and not _rows(database):
            warnings.append(
                f"database {name} holds no rows; it held {rows_before} in backup {previous['id']}"
            )
    return warnings
