"""Backend events: a Redis Stream consumer that turns `migration.pending` into a backup.

The XieHe backend appends `{type: migration.pending, name: NAME}` to XIEHE_EVENTS_STREAM.
Each event is handled once through the consumer group `xiehe-backup`:
- the event id -> backup id mapping is reserved with HSETNX before anything is enqueued,
  so an event handled again (after a crash) follows the backup it already started;
- the entry stays pending while its backup runs; this consumer touches it (XCLAIM to
  itself) so its idle time shows it is alive, and a dead consumer's entries are taken
  over with XAUTOCLAIM once idle longer than XIEHE_EVENTS_CLAIM_IDLE_SECONDS;
- the reply (`backup.completed` / `backup.failed`, correlation_id = the event id) and the
  XACK are one Lua script that replies only if the XACK acknowledged something, so
  there is exactly one reply per event.
Unknown or malformed events are logged and acknowledged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from producers import runs
from producers.cli import common
from workers import config, workflows
from workers.config import Settings
from workers.errors import BackupError

log = logging.getLogger("xiehe.events")

GROUP = "xiehe-backup"
MIGRATION = "migration.pending"
MAPPING_TTL = 30 * 24 * 3600
MAX_NAME = 200
BATCH = 10
RETRY = 2.0  # s before retrying after a Redis error
# XACK and XADD in one script: the reply is appended only by the one who acknowledges.
REPLY_ONCE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
return false
"""


@dataclass(frozen=True)
class EventsConfig:
    url: str
    stream: str
    replies: str
    consumer: str
    claim_idle_ms: int
    block_ms: int = 1000


def load_config(env: Mapping[str, str], settings: Settings) -> EventsConfig:
    url = config._secret(env, "XIEHE_EVENTS_REDIS_URL")
    return EventsConfig(
        url=config._redis_url("XIEHE_EVENTS_REDIS_URL", url) if url else settings.broker_url,
        stream=env.get("XIEHE_EVENTS_STREAM", "").strip() or "xiehe:events",
        replies=env.get("XIEHE_EVENTS_REPLY_STREAM", "").strip() or "xiehe:events:replies",
        consumer=f"{socket.gethostname()}-{os.getpid()}",
        claim_idle_ms=1000 * config._int(env, "XIEHE_EVENTS_CLAIM_IDLE_SECONDS", 60, minimum=1),
    )


def mapping_key(cfg: EventsConfig, event_id: str) -> str:
    return f"{cfg.stream}:backup:{event_id}"


class Consumer:
    def __init__(self, cfg: EventsConfig, settings: Settings) -> None:
        self.cfg, self.settings = cfg, settings
        # Bytes that are not UTF-8 become U+FFFD: such an event is rejected, not a crash.
        self.events = redis.Redis.from_url(
            cfg.url, decode_responses=True, encoding_errors="replace"
        )
        self.broker = common.broker(settings)
        self.inflight: dict[str, tuple[str, str]] = {}  # event id -> (backup id, name)
        self.cursor = "0-0"  # where the scan for abandoned entries goes on
        self.reply_once = self.events.register_script(REPLY_ONCE)

    def ensure_group(self) -> None:
        try:
            self.events.xgroup_create(self.cfg.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: threading.Event) -> None:
        self.ensure_group()
        log.info("consuming %s as %s/%s", self.cfg.stream, GROUP, self.cfg.consumer)
        while not stop.is_set():
            try:
                self.step()
            except redis.RedisError as exc:  # a Redis restart: pending entries wait for us
                log.warning("redis: %s; retrying in %ss", exc, RETRY)
                stop.wait(RETRY)

    def step(self) -> None:
        """One round: take over abandoned entries, read new ones, finish ended backups."""
        self.claim_abandoned()
        batch = self.events.xreadgroup(
            GROUP, self.cfg.consumer, {self.cfg.stream: ">"}, count=BATCH, block=self.cfg.block_ms
        )
        for _stream, entries in batch or []:
            for event_id, fields in entries:
                self.handle(event_id, fields)
        self.touch_inflight()
        self.finish_ended()

    def claim_abandoned(self) -> None:
        self.cursor, entries, *_ = self.events.xautoclaim(
            self.cfg.stream,
            GROUP,
            self.cfg.consumer,
            self.cfg.claim_idle_ms,
            start_id=self.cursor,
            count=BATCH,
        )
        for event_id, fields in entries:
            if event_id not in self.inflight:
                log.info("claimed %s from a consumer that stopped", event_id)
                self.handle(event_id, fields)

    def handle(self, event_id: str, fields: dict[str, str]) -> None:
        kind, name = fields.get("type", ""), fields.get("name", "").strip()
        if kind != MIGRATION:
            return self.drop(event_id, f"unknown event type {kind[:64]!r}")
        if not name or len(name) > MAX_NAME or not name.isprintable():
            return self.drop(event_id, "migration.pending without a valid `name`")
        try:
            backup_id = self.start(event_id, name)
        except BackupError as exc:
            return self.reply(event_id, name, "", str(exc))
        self.inflight[event_id] = (backup_id, name)

    def start(self, event_id: str, name: str) -> str:
        """The backup of this event: started now, or the one a previous attempt started."""
        key = mapping_key(self.cfg, event_id)
        record = self.events.hgetall(key)
        if record.get("enqueued"):
            return record["backup_id"]
        kinds, skipped = runs.select_kinds(self.settings, "")
        backup_id = record.get("backup_id")
        if not backup_id:
            candidate = workflows.reserve_id(self.broker)
            self.events.hsetnx(key, "backup_id", candidate)
            self.events.expire(key, MAPPING_TTL)
            backup_id = self.events.hget(key, "backup_id")
        # no worker check: with none running the run waits in the queue, the event too
        runs.enqueue(
            self.settings,
            kinds,
            skipped,
            f"pre-migration {name}",
            check_worker=False,
            backup_id=backup_id,
        )
        self.events.hset(key, "enqueued", 1)
        log.info("event %s: backup %s for migration %s", event_id, backup_id, name)
        return backup_id

    def touch_inflight(self) -> None:
        """Reset the idle time of the entries this consumer still owns: it is alive."""
        if not self.inflight:
            return
        owned = {
            p["message_id"]
            for p in self.events.xpending_range(
                self.cfg.stream,
                GROUP,
                "-",
                "+",
                count=len(self.inflight) + BATCH,
                consumername=self.cfg.consumer,
            )
        }
        for event_id in set(self.inflight) - owned:
            del self.inflight[event_id]  # acknowledged or taken over elsewhere
        if owned:
            self.events.xclaim(
                self.cfg.stream, GROUP, self.cfg.consumer, 0, sorted(owned), justid=True
            )

    def finish_ended(self) -> None:
        for event_id, (backup_id, name) in list(self.inflight.items()):
            state = runs.outcome(self.broker, backup_id)
            if state is None:
                continue
            failed = state["status"] == "failed"
            self.reply(
                event_id, name, backup_id, (state.get("error") or "failed") if failed else None
            )
            del self.inflight[event_id]

    def reply(self, event_id: str, name: str, backup_id: str, error: str | None) -> None:
        """Acknowledge and reply atomically: one reply, even if two consumers race."""
        fields = {
            "type": "backup.completed" if error is None else "backup.failed",
            "backup_id": backup_id,
            "correlation_id": event_id,
            "name": name,
        }
        if error is not None:
            fields["cause"] = error
        flat = [item for pair in fields.items() for item in pair]
        if self.reply_once(keys=[self.cfg.stream, self.cfg.replies], args=[GROUP, event_id, *flat]):
            log.info("event %s: %s %s", event_id, fields["type"], backup_id)

    def drop(self, event_id: str, why: str) -> None:
        log.warning("event %s ignored: %s", event_id, why)
        self.events.xack(self.cfg.stream, GROUP, event_id)
