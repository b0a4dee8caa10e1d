"""Decoded ticks waiting for the engine, bounded by conflating to the newest per symbol."""

from __future__ import annotations

from streamer.wire import Tick


class TickQueue:
    """Ticks in arrival order; past ``max_ticks`` it keeps only the newest tick of each
    symbol (where it stood), so memory stays bounded and the levels current."""

    def __init__(self, max_ticks: int) -> None:
        self.max_ticks = max_ticks
        self._ticks: list[Tick] = []
        self._receipts: list[int] = []
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._ticks)

    def extend(self, ticks: list[Tick], receipts: list[int]) -> None:
        self._ticks.extend(ticks)
        self._receipts.extend(receipts)
        if len(self._ticks) > self.max_ticks:
            self._conflate()

    def _conflate(self) -> None:
        # Order is kept among the survivors: the last tick of each symbol, where it stood.
        last: dict[str, int] = {}
        for i, tick in enumerate(self._ticks):
            last[tick.symbol] = i
        keep = sorted(last.values())
        self.conflated += len(self._ticks) - len(keep)
        self._ticks = [self._ticks[i] for i in keep]
        self._receipts = [self._receipts[i] for i in keep]

    def take(self, limit: int) -> tuple[list[Tick], list[int]]:
        """Up to ``limit`` of the oldest ticks and their receipt times."""
        if len(self._ticks) <= limit:
            ticks, receipts = self._ticks, self._receipts
            self._ticks, self._receipts = [], []
            return ticks, receipts
        ticks, receipts = self._ticks[:limit], self._receipts[:limit]
        del self._ticks[:limit]
        del self._receipts[:limit]
        return ticks, receipts

    def take_conflated(self) -> int:
        n, self.conflated = self.conflated, 0
        return n
