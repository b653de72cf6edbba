"""Docker named volumes: archive to a tar artifact and restore from one, through the engine API.

The volume is never read from the host's /var/lib/docker: a helper container mounts it,
and the engine's archive API streams a tar of the mount point.  An unencrypted zstd backup
is framed (see volume_index): every member passes the safety filter and is written with a
fresh header, each file's data in a zstd frame of its own, and an index of the frames
closes the artifact.  Given the previous backup's artifact, the helper first lists the
volume (stat only), and files whose inode, size, mtime and ctime are unchanged have their
frames copied verbatim from it: only new and changed files are read through the engine
and compressed, and the new artifact is still a whole tar that restores alone.  Other
codecs tee the engine's stream unchanged into the artifact while parsing it.
Restore re-emits every member that passed the safety filter (normalized names, no stray
PAX fields), so the engine only ever unpacks headers this module has judged.
"""

from workers.targets.volumes.archiver import archive
from workers.targets.volumes.engine import check
from workers.targets.volumes.inventory import file_inventory, manifest_sha256
from workers.targets.volumes.restorer import restore

__all__ = ["archive", "check", "file_inventory", "manifest_sha256", "restore"]
