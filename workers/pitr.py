"""Plan a point-in-time restore: which full backup, which archived binlog, up to where.

The target is a moment, a binlog position or a GTID; each becomes a stop position in the
archive so the replay applies whole transactions only:
  - a moment T: the first transaction whose GTID event is stamped T or later (MariaDB
    stamps it with the COMMIT's time), i.e. every transaction committed before T is kept;
  - FILE:POS: up to that position (excluded), as mariadb-binlog --stop-position;
  - a GTID D-S-N: up to and including that transaction.
The backup is the newest verified one whose snapshot position lies before the stop and
whose snapshot holds nothing committed at or after T; the replay starts at the position
recorded in its manifest (mysql.binlog).

Time zones: "YYYY-MM-DD HH:MM:SS" is the MySQL server's local time (its @@time_zone, what
NOW() shows the application); suffix Z or +08:00 to give another zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from workers.config import Settings
from workers.errors import BackupError
from workers.steps.restore_scope import selected_artifacts
from workers.store import manifest as manifests
from workers.store.layout import Tree
from workers.targets import binlog
from workers.targets.mysql.common import connect, scalar

FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Point:
    file: str
    position: int

    def key(self) -> tuple[int, int]:
        return binlog.file_number(self.file), self.position


def moment(text: str, settings: Settings) -> float:
    """Epoch seconds of `text`: with a zone suffix as given, else in the server's zone."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BackupError(f"--to: expected 'YYYY-MM-DD HH:MM:SS', got {text!r}") from None
    if parsed.tzinfo is not None:
        return parsed.timestamp()
    if settings.mysql is None:
        raise BackupError("--to: XIEHE_MYSQL_HOST is not set; add a zone suffix like +08:00")
    conn = connect(settings.mysql)
    try:
        conn.query("SET SESSION time_zone = @@GLOBAL.time_zone")
        epoch = scalar(conn, "SELECT UNIX_TIMESTAMP(%s)", (parsed.strftime(FORMAT),))
    finally:
        conn.close()
    if epoch is None:
        raise BackupError(f"--to: the server cannot read {text!r} as a time")
    return float(epoch)


def _archive(settings: Settings) -> list[Path]:
    files = binlog.archived_files(settings.backup_dir / "binlog")
    if not files:
        raise BackupError(
            "no archived binlog in backups/binlog: point-in-time recovery needs "
            "`xiehe-backup binlog-archiver` running since the backup"
        )
    numbers = [binlog.file_number(p.name) for p in files]
    for before, after in zip(numbers, numbers[1:], strict=False):
        if after != before + 1:
            raise BackupError(f"the binlog archive has a gap between files {before} and {after}")
    return files


def _after(files: list[Path], start: Point) -> list[Path]:
    return [p for p in files if binlog.file_number(p.name) >= binlog.file_number(start.file)]


def _upto(path: Path, stop: Point) -> bool:
    return binlog.file_number(path.name) <= binlog.file_number(stop.file)


def _first_commit_at(files: list[Path], start: Point, epoch: float) -> Point | None:
    """The first transaction stamped at or after `epoch`, from `start` on."""
    for path in _after(files, start):
        begin = start.position if path.name == start.file else 4
        for event in binlog.events(path, begin):
            if event.gtid and event.timestamp >= epoch:
                return Point(path.name, event.position)
    return None


def _after_gtid(files: list[Path], gtid: str) -> Point | None:
    """The position right after transaction `gtid` (the next one's start; None: the end)."""
    found = False
    for path in files:
        for event in binlog.events(path):
            if found and event.gtid:
                return Point(path.name, event.position)
            found = found or event.gtid == gtid
    if not found:
        raise BackupError(f"--to-gtid: {gtid} is not in the binlog archive")
    return None


def _snapshot_before(files: list[Path], start: Point, epoch: float) -> bool:
    """Whether nothing before `start` was committed at or after `epoch`: walk back from the
    start until a file opened before `epoch` (everything earlier is older still)."""
    earlier = [p for p in files if binlog.file_number(p.name) <= binlog.file_number(start.file)]
    for path in reversed(earlier):
        limit = start.position if path.name == start.file else None
        for event in binlog.events(path):
            if limit is not None and event.position >= limit:
                break
            if event.gtid and event.timestamp >= epoch:
                return False
        opened = binlog.creation_time(path)
        if opened is not None and opened < epoch:
            return True
    return True


def _candidates(tree: Tree, backup_id: str | None) -> list[dict]:
    """Verified backups with a recorded binlog position, newest first."""
    found = [
        m
        for m in manifests.read_all(tree)
        if m.get("status") == "verified"
        and ((m.get("mysql") or {}).get("binlog") or {}).get("file")
    ]
    if backup_id:
        found = [m for m in found if m["id"] == backup_id]
    return sorted(found, key=lambda m: m["id"], reverse=True)


def _target(
    settings: Settings, files: list[Path], to: str | None, position: str | None, gtid: str | None
) -> dict:
    if sum(x is not None for x in (to, position, gtid)) != 1:
        raise BackupError("give exactly one of --to, --to-position, --to-gtid")
    if to is not None:
        epoch = moment(to, settings)
        return {"kind": "time", "text": to, "epoch": epoch}
    if position is not None:
        name, _, pos = position.rpartition(":")
        if not name or not pos.isdigit():
            raise BackupError(f"--to-position: expected FILE:POS, got {position!r}")
        binlog.file_number(name)
        if name not in {p.name for p in files}:
            raise BackupError(f"--to-position: {name} is not in the binlog archive")
        return {"kind": "position", "text": position, "stop": Point(name, int(pos))}
    return {"kind": "gtid", "text": gtid, "stop": _after_gtid(files, gtid)}


def _complete_until(settings: Settings) -> float:
    state = binlog.read_state(settings) or {}
    return float(state.get("complete_until") or 0)


def plan(
    settings: Settings,
    tree: Tree,
    only: list[str],
    to: str | None = None,
    to_position: str | None = None,
    to_gtid: str | None = None,
    backup_id: str | None = None,
) -> dict:
    """The restore plan (plain data, stored in the run as run["pitr"])."""
    files = _archive(settings)
    target = _target(settings, files, to, to_position, to_gtid)
    only = only or ["mysql"]  # volumes and Redis have no log to replay: keep them as they are
    archived = {p.name for p in files}
    skipped = []
    for manifest in _candidates(tree, backup_id):
        start = Point(manifest["mysql"]["binlog"]["file"], manifest["mysql"]["binlog"]["position"])
        if start.file not in archived:
            skipped.append(f"{manifest['id']}: its binlog file {start.file} is not archived")
            continue
        stop = _stop_for(settings, files, target, manifest, start)
        if stop is False:
            skipped.append(f"{manifest['id']}: its snapshot is after the target")
            continue
        artifacts = selected_artifacts(manifest, only)
        return {
            "backup_id": manifest["id"],
            "backup_created_at": manifest["created_at"],
            "target": {k: v for k, v in target.items() if k != "stop"},
            "start": {"file": start.file, "position": start.position},
            "stop": {"file": stop.file, "position": stop.position} if stop else None,
            "files": [p.name for p in _after(files, start) if not stop or _upto(p, stop)],
            "only": only,
            "databases": [a["source"] for a in artifacts if a["kind"] == "mysql"],
        }
    why = "; ".join(skipped) or "no verified backup records a binlog position"
    raise BackupError(f"no backup to start from for {target['text']}: {why}")


def _stop_for(settings: Settings, files: list[Path], target: dict, manifest: dict, start: Point):
    """Where the replay from `start` stops (None: the archive's end); False: the backup is
    not before the target."""
    if target["kind"] != "time":
        stop = target["stop"]
        return False if stop and stop.key() < start.key() else stop
    epoch = target["epoch"]
    if datetime.fromisoformat(manifest["created_at"]).timestamp() >= epoch:
        return False
    if not _snapshot_before(files, start, epoch):
        return False
    stop = _first_commit_at(files, start, epoch)
    if stop is None and _complete_until(settings) < epoch:
        raise BackupError(
            f"the binlog archive does not reach {target['text']} yet: is the archiver running "
            "and caught up? (xiehe-backup status)"
        )
    return stop


def describe(p: dict) -> str:
    """The --dry-run text."""
    stop = p["stop"]
    target = p["target"]
    when = ""
    if target["kind"] == "time":
        when = f" (UTC {datetime.fromtimestamp(target['epoch'], UTC).strftime(FORMAT)})"
    lines = [
        f"point-in-time restore to {target['kind']} {target['text']}{when}",
        f"  1. restore full backup {p['backup_id']} (created {p['backup_created_at']}):"
        f" {', '.join(p['only'])}",
        f"  2. replay the archived binlog into {', '.join(p['databases']) or 'no database'}:",
        f"     from {p['start']['file']}:{p['start']['position']}",
        "     to   "
        + (f"{stop['file']}:{stop['position']} (excluded)" if stop else "the end of the archive"),
        f"     files: {', '.join(p['files'])}",
    ]
    return "\n".join(lines)
