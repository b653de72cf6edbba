"""What a step may use besides its input: settings, the tree, the broker, progress."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis

from workers.config import Settings
from workers.progress import Progress
from workers.store.codec import Codec
from workers.store.layout import Tree


@dataclass
class StepContext:
    settings: Settings
    progress: Progress
    broker: redis.Redis

    @property
    def tree(self) -> Tree:
        return Tree(self.settings.backup_dir)

    @property
    def codec(self) -> Codec:
        s = self.settings
        return Codec(s.compression, s.zstd_level, s.age_recipients)

    @cached_property
    def docker(self):
        from workers.targets import docker_engine

        return docker_engine.client(self.settings.docker_url)
