"""Progress of a volume's archive or restore, reported every PROGRESS_EVERY bytes."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int], None] | None
PROGRESS_EVERY = 16 << 20


class Meter:
    """Calls progress(bytes so far) every PROGRESS_EVERY bytes, and once at the end."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.done = self.reported = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.progress and self.done - self.reported >= PROGRESS_EVERY:
            self.progress(self.done)
            self.reported = self.done

    def finish(self) -> None:
        if self.progress:
            self.progress(self.done)
