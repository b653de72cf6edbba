"""The backup tree: where every artifact of a backup lives, and where it is staged.

    backups/
      mysql/<db>_ID.sql.zst, mysql/full_backup_ID.list
      redis/dump_ID.rdb.zst
      volumes/<volume>_ID.tar.zst.parts/   the tar.zst as part files (store.parts);
                                            encrypted: volumes/<volume>_ID.tar.zst.age
      backup_info_ID.txt          human-readable summary (the seed plan's file)
      manifest_ID.json            machine-readable; written last, it marks a backup complete
      .staging/ID/<kind>/...      artifacts of a run in progress (same file system: rename)
      .runs/ID.json               the run journal: every step's result, also for failed runs

Directories are 0700 and files 0600: the tree holds patients' records.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ID_PATTERN = re.compile(r"^\d{8}_\d{6}$")
KIND_DIRS = {"mysql": "mysql", "mysql-index": "mysql", "redis": "redis", "volume": "volumes"}


def new_backup_id(now: datetime | None = None) -> str:
    return (now or datetime.now().astimezone()).strftime("%Y%m%d_%H%M%S")


def is_backup_id(text: str) -> bool:
    return bool(ID_PATTERN.match(text))


@dataclass(frozen=True)
class Tree:
    root: Path

    def ensure(self) -> None:
        """Create what is missing, 0700.  Existing directories keep their mode: a tree that
        others could write is for a restore's preflight to refuse, not to quietly mend."""
        for sub in ("", "mysql", "redis", "volumes", ".staging", ".runs"):
            path = self.root / sub
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(path, 0o700)  # mkdir's mode is masked by the umask

    def staging(self, backup_id: str) -> Path:
        return self.root / ".staging" / backup_id

    def staging_dir(self, backup_id: str, kind: str) -> Path:
        return self.staging(backup_id) / KIND_DIRS[kind]

    def final_dir(self, kind: str) -> Path:
        return self.root / KIND_DIRS[kind]

    def manifest(self, backup_id: str) -> Path:
        return self.root / f"manifest_{backup_id}.json"

    def backup_info(self, backup_id: str) -> Path:
        return self.root / f"backup_info_{backup_id}.txt"

    def journal(self, backup_id: str) -> Path:
        return self.root / ".runs" / f"{backup_id}.json"

    def artifact_path(self, artifact: dict) -> Path:
        """Where a published artifact lies (manifest paths are relative to the root)."""
        return self.root / artifact["path"]

    def manifest_ids(self) -> list[str]:
        ids = [p.name[len("manifest_") : -len(".json")] for p in self.root.glob("manifest_*.json")]
        return sorted(i for i in ids if is_backup_id(i))

    def files_of(self, backup_id: str) -> list[Path]:
        """Every published file that carries this id (for cleanup of an unfinished publish)."""
        found = []
        for sub in ("mysql", "redis", "volumes"):
            found += [p for p in (self.root / sub).glob(f"*_{backup_id}.*")]
        found += [self.backup_info(backup_id)]
        return [p for p in found if p.exists()]
