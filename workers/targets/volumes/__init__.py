"""Docker named volumes: archive to a tar artifact and restore from one.

A volume is read in place from its mountpoint when this worker can reach it (direct:
every path opened below its parent's descriptor, no symlink followed out of it), else a
read-only helper container mounts it and the engine's archive API streams a tar of it
(engine).  An unencrypted zstd backup is framed (index): every member passes the safety
filter and is written with a fresh header (members), each file's data in a zstd frame of
its own, and an index of the frames closes the artifact (composer).  Given the previous
backup's artifact (previous), the volume is first listed (stat only), and files whose
inode, size, mtime and ctime are unchanged have their parts linked or frames copied from
it: only new and changed files are read (fetcher, or direct) and compressed, and the new
artifact is still a whole tar that restores alone (archiver).  Other codecs tee the
engine's stream unchanged into the artifact while parsing it.  Restore (restorer) re-emits
every member that passed the safety filter (normalized names, no stray PAX fields), so the
engine only ever unpacks headers this package has judged.  inventory: what a volume holds,
path by path, and the manifest digest of it.
"""

from workers.targets.volumes.archiver import archive
from workers.targets.volumes.engine import check
from workers.targets.volumes.inventory import file_inventory, manifest_sha256
from workers.targets.volumes.restorer import restore

__all__ = ["archive", "check", "file_inventory", "manifest_sha256", "restore"]
