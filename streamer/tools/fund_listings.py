"""Simulated exchange quotes of fund listings, around each fund's iNAV.

A market maker quotes an ETF around its indicative value, and the quote's mid drifts a few
basis points away from it and back (creations and redemptions arbitrage a larger gap away).
Here each fund's premium is an Ornstein-Uhlenbeck process in bps,

    dp = -p / tau * dt + sigma * sqrt(2 / tau) * dW        (stationary stdev: sigma)

and every quote has a bid and an ask ``half_spread_bps`` either side of
``mid = iNAV * (1 + p / 1e4)``, with a last price at the bid or the ask.  The iNAV is the
basket valued at the feed's current prices (holdings in another currency at the feed's
starting FX rate, which is near enough for a quote).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamer.fund_config import FundDefinition
from streamer.tools.feed import F64, FeedUniverse, starting_fx_rate
from streamer.wire import Tick

PREMIUM_SIGMA_BPS = 4.0
PREMIUM_TAU_S = 30.0  # mean reversion time, trading seconds
HALF_SPREAD_BPS = 2.0


class ListingQuoter:
    """Quotes for every fund's listing from the feed's prices (one quote per fund per call)."""

    def __init__(
        self, funds: Sequence[FundDefinition], universe: FeedUniverse, seed: int | None = None
    ) -> None:
        position = {s: k for k, s in enumerate(universe.symbols)}
        self.listings = [f.listing for f in funds]
        self.rng = np.random.default_rng(None if seed is None else seed + 1)
        self._positions: list[np.ndarray] = []
        self._weights: list[F64] = []
        self._cash = np.array([f.basket.cash for f in funds], dtype=np.float64)
        self._units = np.array([f.basket.units for f in funds], dtype=np.float64)
        for f in funds:
            held = [h for h in f.basket.holdings if h.symbol in position]
            self._positions.append(np.array([position[h.symbol] for h in held], dtype=np.int64))
            self._weights.append(
                np.array(
                    [
                        h.shares * starting_fx_rate((h.currency or f.currency) + f.currency)
                        for h in held
                    ],
                    dtype=np.float64,
                )
            )
        self.premium_bps = self.rng.normal(0.0, PREMIUM_SIGMA_BPS, len(funds))
        self._last_t = 0.0

    def inav(self, prices: F64) -> F64:
        pairs = zip(self._positions, self._weights, strict=True)
        values = np.array([weights @ prices[held] for held, weights in pairs])
        inav: F64 = (values + self._cash) / self._units
        return inav

    def quotes(self, prices: F64, trading_time_s: float, ts: int) -> list[Tick]:
        """One tick per listing: last, bid and ask around the iNAV at ``prices``."""
        dt = max(trading_time_s - self._last_t, 0.0)
        self._last_t = trading_time_s
        decay = np.exp(-dt / PREMIUM_TAU_S)
        noise = self.rng.standard_normal(len(self.listings))
        self.premium_bps = (
            self.premium_bps * decay + PREMIUM_SIGMA_BPS * np.sqrt(1.0 - decay**2) * noise
        )
        mid = self.inav(prices) * (1.0 + self.premium_bps / 1e4)
        bid = np.round(mid * (1.0 - HALF_SPREAD_BPS / 1e4), 2)
        ask = np.maximum(np.round(mid * (1.0 + HALF_SPREAD_BPS / 1e4), 2), bid + 0.01)
        at_ask = self.rng.random(len(self.listings)) < 0.5
        last = np.where(at_ask, ask, bid)
        return [
            Tick(symbol, float(p), ts, bid=float(b), ask=float(a))
            for symbol, p, b, a in zip(self.listings, last, bid, ask, strict=True)
        ]
