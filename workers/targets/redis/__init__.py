"""Redis target: check, snapshot (RDB), restore, and a key dump for tests and drills.

Two modes, chosen by settings.container:
- container: BGSAVE in the container; the RDB is read in place when it lies on a volume
  this worker can read (while Redis writes it), else copied out through the Docker API;
  restore stops the container, puts the RDB into its data dir, and starts it again.
- live (no container): fetch the RDB over the replication protocol like `redis-cli --rdb`
  (from the master's disk when it writes RDB snapshots anyway); restore loads the RDB into
  a private temporary redis-server and copies every key into the target with DUMP/RESTORE.
Every RDB is checked (magic, version, CRC64) while it streams, before it counts.
The URL's password is only ever sent over the Redis connection, never put in an argv,
a message or a returned dict.

Modules: connection (clients, errors, server state), stream (the read-ahead thread), rdb
(the RDB's checks), bgsave, replication, container_files, container_snapshot, capture (a
snapshot into one artifact), container_restore, live_restore, restorer, keys.
"""

from workers.targets.redis.capture import snapshot
from workers.targets.redis.connection import check
from workers.targets.redis.keys import dump_keys
from workers.targets.redis.rdb import verify_rdb
from workers.targets.redis.restorer import restore

__all__ = ["check", "dump_keys", "restore", "snapshot", "verify_rdb"]
