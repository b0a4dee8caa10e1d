"""Retrying a server: jittered exponential delays, and a loop that can still be stopped."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays base * 2^n capped at ``cap``, each scaled by U(0.5, 1)."""

    def __init__(
        self, base_s: float = 0.05, cap_s: float = 5.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap_s, self.base_s * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


def reraise_if_cancelled() -> None:
    """Call in an ``except OSError`` (or wider) of a retry loop.  On Python 3.11 a
    cancellation that lands inside redis-py's own timeout can come out as TimeoutError (an
    OSError); a loop that catches it would go on forever and the service could never stop.
    The task's pending cancellation tells the truth."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
