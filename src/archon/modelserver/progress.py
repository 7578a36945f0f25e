"""Download progress: what the runtime reports on /health and the timed log lines of a pull."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("archon.hub")


@dataclass
class Progress:
    done: int
    total: int | None
    bytes_per_s: float

    @property
    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total else None


def format_progress(name: str, p: Progress) -> str:
    if p.total:
        pct = 100.0 * p.done / p.total
        eta = (p.total - p.done) / p.bytes_per_s if p.bytes_per_s > 0 else None
        return (
            f"downloading {name}: {pct:.1f}% ({size_text(p.done)}/{size_text(p.total)}) "
            f"{p.bytes_per_s / 1e6:.1f} MB/s ETA {_duration(eta)}"
        )
    return f"downloading {name}: {size_text(p.done)} {p.bytes_per_s / 1e6:.1f} MB/s"


def size_text(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Reporter:
    """Aggregate byte counts of several files into progress callbacks and timed log lines."""

    def __init__(
        self,
        name: str,
        total: int | None,
        on_progress: Callable[[Progress], None],
        log_interval: float,
        already: int = 0,
    ):
        self.name = name
        self.total = total
        self.done = already
        self._start_done = already
        self._began = self._last_log = time.monotonic()
        self._on_progress = on_progress
        self._interval = log_interval

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        progress = self.snapshot(now)
        self._on_progress(progress)
        if now - self._last_log >= self._interval:
            self._last_log = now
            log.info("%s", format_progress(self.name, progress))

    def snapshot(self, now: float | None = None) -> Progress:
        elapsed = max((now or time.monotonic()) - self._began, 1e-6)
        return Progress(self.done, self.total, (self.done - self._start_done) / elapsed)

    def finish(self) -> None:
        progress = Progress(self.done, self.total, self.snapshot().bytes_per_s)
        self._on_progress(progress)
        log.info("%s", format_progress(self.name, progress))
