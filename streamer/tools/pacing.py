"""Pacing: release events at a steady rate, in bursts as small as the clock allows."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Spreads ``rate`` events per second evenly from the first call to ``due``.

    A sender that falls behind catches up in bursts, but never by more than ``max_lag_s`` of
    backlog: a stalled broker must not be followed by an unbounded flood.
    """

    def __init__(
        self,
        rate: float,
        *,
        max_lag_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.max_lag_s = max_lag_s
        self._clock = clock
        self._start: float | None = None
        self._released = 0
        self.skipped = 0  # events dropped from the schedule because the sender fell behind

    @property
    def started(self) -> float:
        if self._start is None:
            self._start = self._clock()
        return self._start

    def due(self) -> int:
        """How many events are due now and not yet released."""
        elapsed = self._clock() - self.started
        due = int(elapsed * self.rate) - self._released
        backlog_cap = max(1, int(self.max_lag_s * self.rate))
        if due > backlog_cap:
            self.skipped += due - backlog_cap
            self._released += due - backlog_cap
            due = backlog_cap
        return max(due, 0)

    def release(self, count: int) -> None:
        self._released += count

    def seconds_until_next(self) -> float:
        next_at = self.started + (self._released + 1) / self.rate
        return max(next_at - self._clock(), 0.0)

    def wait(
        self, sleep: Callable[[float], None] = time.sleep, granularity_s: float = 5e-4
    ) -> None:
        """Sleep until the next event is due (or at most 50 ms, to stay responsive)."""
        pause = self.seconds_until_next()
        if pause > 0:
            sleep(min(max(pause, granularity_s), 0.05))
