"""FX conversion: live pair rates -> one factor per (constituent currency, index currency) slot.

Slot 0 is the identity.  Each other slot converts one currency into another, directly
(``EURUSD``), by the inverse pair (``USDEUR`` given, ``EURUSD`` wanted) or crossed through USD or
EUR.  A slot whose rates have not all arrived is NaN, and the entries using it stay unpriced.
"""

from __future__ import annotations

import math

import numpy as np

from streamer.engine.arrays import F64

PIVOTS = ("USD", "EUR")


class FxBook:
    def __init__(self) -> None:
        self.rates: dict[str, float] = {}
        self.rate_ts: dict[str, int] = {}
        self.slots: dict[tuple[str, str], int] = {("", ""): 0}
        self.factor: F64 = np.ones(1)

    def slot(self, source: str, target: str) -> int:
        """The slot converting ``source`` into ``target`` (0 when they are the same)."""
        if source == target:
            return 0
        key = (source, target)
        if key not in self.slots:
            self.slots[key] = len(self.slots)
            self.factor = np.append(self.factor, self._convert(source, target))
        return self.slots[key]

    def update(self, pair: str, rate: float, ts: int) -> bool:
        """Record a rate; False when it is older than the rate we hold (then nothing changes)."""
        if ts < self.rate_ts.get(pair, ts):
            return False
        self.rates[pair] = rate
        self.rate_ts[pair] = ts
        return True

    def refresh(self) -> F64:
        """Recompute every slot from the current rates; returns the previous factors."""
        previous = self.factor.copy()
        for (source, target), k in self.slots.items():
            if k:
                self.factor[k] = self._convert(source, target)
        return previous

    def _direct(self, source: str, target: str) -> float:
        if source == target:
            return 1.0
        rate = self.rates.get(source + target)
        if rate is not None:
            return rate
        inverse = self.rates.get(target + source)
        if inverse is not None:
            return 1.0 / inverse
        return math.nan

    def _convert(self, source: str, target: str) -> float:
        direct = self._direct(source, target)
        if not math.isnan(direct):
            return direct
        for pivot in PIVOTS:
            crossed = self._direct(source, pivot) * self._direct(pivot, target)
            if not math.isnan(crossed):
                return crossed
        return math.nan
