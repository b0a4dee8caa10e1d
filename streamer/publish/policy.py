"""How often a series is published and how much history it keeps: the per-series rate cap
and the history policy within a memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from streamer.config import PublishSettings

# Estimated Redis memory of one stream entry (a stream stores the field names once per node),
# for the history memory budget.
HISTORY_ENTRY_BYTES = 160
BAR_ENTRY_BYTES = 90


class RateCap:
    """At most one publish per series per ``interval_ns``; a series that changed sooner
    waits, and goes out (at its newest level) as soon as its interval has passed."""

    def __init__(self, interval_ns: int) -> None:
        self.interval_ns = interval_ns
        self._last: dict[str, int] = {}
        self._waiting: set[str] = set()

    def due(self, changed: set[str], now: int) -> set[str]:
        """The series of ``changed`` (and those waiting) that may go out now."""
        if self.interval_ns <= 0:
            return changed
        candidates = changed | self._waiting if self._waiting else changed
        last, interval = self._last, self.interval_ns
        ready = {s for s in candidates if now - last.get(s, -interval) >= interval}
        self._waiting = candidates - ready
        for s in ready:
            last[s] = now
        return ready

    def next_due_ns(self) -> int | None:
        """When the first waiting series may go out (None: none waits)."""
        if not self._waiting:
            return None
        return min(self._last[s] for s in self._waiting) + self.interval_ns

    def published_all(self, series: Iterable[str], now: int) -> None:
        """Every series went out now (a full cycle): none waits, each interval restarts."""
        if self.interval_ns <= 0:
            return
        self._waiting = set()
        last = self._last
        for s in series:
            last[s] = now


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history is kept: sampled raw entries and minute bars, trimmed by time."""

    interval_ms: int = 1000  # per series, at most one raw entry per this many ms
    retention_ms: int = 86_400_000
    bars_retention_ms: int = 172_800_000
    memory_bytes: int = 1 << 30

    def for_series(self, count: int) -> HistoryPolicy:
        """The policy that keeps ``count`` series within the memory budget: half of it for
        raw entries (the sampling interval grows), half for bars (their retention
        shrinks)."""
        if count <= 0:
            return self
        half = self.memory_bytes / 2
        # count * (retention / interval) * entry_bytes <= half
        needed = count * self.retention_ms * HISTORY_ENTRY_BYTES / half
        interval = max(self.interval_ms, math.ceil(needed))
        # count * (retention / 60 s) * bar_bytes <= half
        bars = min(self.bars_retention_ms, int(half / (count * BAR_ENTRY_BYTES) * 60_000))
        return HistoryPolicy(interval, self.retention_ms, bars, self.memory_bytes)


def history_policy(settings: PublishSettings) -> HistoryPolicy:
    return HistoryPolicy(
        interval_ms=settings.history_interval_ms,
        retention_ms=int(settings.history_retention_s * 1000),
        bars_retention_ms=int(settings.bars_retention_s * 1000),
        memory_bytes=int(settings.history_memory_mb * (1 << 20)),
    )
