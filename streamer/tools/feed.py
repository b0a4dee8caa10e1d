"""A simulated market: correlated geometric Brownian motion for every constituent and FX pair.

Each stock's log price moves with a common market factor plus its own noise,

    d log P_i = beta_i * dM + sigma_i * dW_i - (beta_i^2 sigma_m^2 + sigma_i^2) / 2 * dt,
    dM = sigma_m * dW_m,

so stocks are correlated through the market (pairwise correlation of about 0.3 to 0.5 with
the default parameters) and prices stay positive and drift-free in expectation.  A whole chunk
of ticks is drawn at once: symbols, trading times and moves are numpy arrays, and repeated
symbols within a chunk are chained with a segmented cumulative sum.  Published prices are
rounded to the tick size; the state keeps the unrounded log price so rounding does not bias
the walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamer.config import Settings

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600
TICK_SIZE = 0.01
DEFAULT_PRICE = 100.0

# USD value of one unit of each currency: starting points for FX pairs when the feed needs one.
# EUR and GBP match the rates the demo universe's seed prices assume.
USD_PER_UNIT = {
    "USD": 1.0, "EUR": 1.08, "GBP": 1.27, "JPY": 1 / 150.0, "CHF": 1.13, "CAD": 0.73,
    "AUD": 0.66, "NZD": 0.60, "SEK": 0.095, "NOK": 0.093, "DKK": 0.145, "HKD": 0.128,
    "SGD": 0.74, "CNY": 0.14, "CNH": 0.14, "KRW": 0.00074, "INR": 0.012, "BRL": 0.18,
    "MXN": 0.055, "ZAR": 0.055,
}  # fmt: skip


@dataclass(frozen=True)
class FeedUniverse:
    """What to simulate: symbols with starting prices, and FX pairs with starting rates."""

    symbols: tuple[str, ...]
    start_prices: F64
    fx_pairs: tuple[str, ...] = ()
    fx_start: F64 = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedUniverse:
        """Every constituent of every index and holding of every fund (seed ``price`` =
        previous close, else 100) and
        every pair ``<constituent currency><index currency>`` a cross-currency index needs."""
        prices: dict[str, float] = {}
        pairs: set[str] = set()
        for index in settings.indices:
            for spec in index.constituents:
                if spec.price is not None or spec.symbol not in prices:
                    prices[spec.symbol] = spec.price or prices.get(spec.symbol, DEFAULT_PRICE)
                currency = spec.currency or index.currency
                if currency != index.currency:
                    pairs.add(currency + index.currency)
        for fund in settings.funds:  # holdings no index has (the listings are quoted apart)
            for holding in fund.basket.holdings:
                prices.setdefault(holding.symbol, DEFAULT_PRICE)
        fx_pairs = tuple(sorted(pairs))
        return cls(
            symbols=tuple(prices),
            start_prices=np.array(list(prices.values()), dtype=np.float64),
            fx_pairs=fx_pairs,
            fx_start=np.array([starting_fx_rate(p) for p in fx_pairs], dtype=np.float64),
        )


def starting_fx_rate(pair: str) -> float:
    """Units of the quote currency per one base (``EURUSD`` -> USD per EUR)."""
    base, quote = pair[:3], pair[3:]
    return USD_PER_UNIT.get(base, 1.0) / USD_PER_UNIT.get(quote, 1.0)


def fx_decimals(pair: str) -> int:
    return 3 if pair.endswith("JPY") else 5


@dataclass
class TickChunk:
    """Consecutive ticks: which symbol, at what price, with which per-symbol sequence number."""

    symbol_ids: I64
    prices: F64
    seqs: I64

    def __len__(self) -> int:
        return len(self.symbol_ids)


class GbmMarket:
    """The evolving state of the simulated market; time is trading seconds since the open."""

    def __init__(
        self,
        universe: FeedUniverse,
        seed: int | None = None,
        market_vol: float = 0.16,
        fx_vol: float = 0.07,
    ) -> None:
        n = len(universe.symbols)
        if n == 0:
            raise ValueError("the feed needs at least one symbol")
        self.universe = universe
        self.rng = np.random.default_rng(seed)
        self.market_vol = market_vol
        self.fx_vol = fx_vol
        self.beta: F64 = self.rng.uniform(0.7, 1.3, n)
        self.idio_vol: F64 = self.rng.uniform(0.12, 0.35, n)
        self.log_price: F64 = np.log(universe.start_prices.astype(np.float64))
        self.last_t: F64 = np.zeros(n)  # trading time of each symbol's last tick
        self.last_market: F64 = np.zeros(n)  # market factor at each symbol's last tick
        self.seq: I64 = np.zeros(n, dtype=np.int64)
        self.market = 0.0
        self.market_t = 0.0
        self.fx_log_rate: F64 = np.log(universe.fx_start.astype(np.float64))
        self.fx_t = 0.0
        self._fx_decimals = np.array([fx_decimals(p) for p in universe.fx_pairs], dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.universe.symbols)

    def opening(self) -> TickChunk:
        """One tick per symbol at its current price (the starting price at first)."""
        ids = np.arange(self.size, dtype=np.int64)
        self.seq += 1
        return TickChunk(ids, round_to_tick(np.exp(self.log_price)), self.seq.copy())

    def random_symbols(self, count: int) -> I64:
        return self.rng.integers(0, self.size, count, dtype=np.int64)

    def round_robin_symbols(self, start: int, count: int) -> I64:
        return (np.arange(start, start + count, dtype=np.int64) % self.size).astype(np.int64)

    def step(self, symbol_ids: I64, times: F64) -> TickChunk:
        """Ticks for ``symbol_ids`` at non-decreasing trading ``times`` (seconds)."""
        n = len(symbol_ids)
        if n == 0:
            return TickChunk(symbol_ids, np.zeros(0), np.zeros(0, dtype=np.int64))
        year = TRADING_SECONDS_PER_YEAR
        # The market factor along the chunk's timeline.
        dt_market = np.diff(times, prepend=self.market_t).clip(min=0.0)
        market_path = self.market + np.cumsum(
            self.market_vol * np.sqrt(dt_market / year) * self.rng.standard_normal(n)
        )
        self.market = float(market_path[-1])
        self.market_t = float(times[-1])

        # Group the chunk by symbol (stable: keeps time order) to chain repeated symbols.
        order = np.argsort(symbol_ids, kind="stable")
        sym = symbol_ids[order]
        t = times[order]
        m = market_path[order]
        first = np.ones(n, dtype=bool)
        first[1:] = sym[1:] != sym[:-1]
        prev_t = np.where(first, self.last_t[sym], np.roll(t, 1))
        prev_m = np.where(first, self.last_market[sym], np.roll(m, 1))
        dt = (t - prev_t).clip(min=0.0) / year
        beta = self.beta[sym]
        idio = self.idio_vol[sym]
        moves = (
            beta * (m - prev_m)
            + idio * np.sqrt(dt) * self.rng.standard_normal(n)
            - 0.5 * (beta**2 * self.market_vol**2 + idio**2) * dt
        )
        starts = np.flatnonzero(first)
        lengths = np.diff(np.append(starts, n))
        running = np.cumsum(moves)
        before_group = np.repeat(running[starts] - moves[starts], lengths)
        log_price = self.log_price[sym] + (running - before_group)
        rank_in_group = np.arange(n) - np.repeat(starts, lengths)
        seq = self.seq[sym] + rank_in_group + 1

        lasts = np.append(starts[1:] - 1, n - 1)
        last_sym = sym[lasts]
        self.log_price[last_sym] = log_price[lasts]
        self.last_t[last_sym] = t[lasts]
        self.last_market[last_sym] = m[lasts]
        self.seq[last_sym] = seq[lasts]

        prices = np.empty(n)
        prices[order] = np.exp(log_price)
        seqs = np.empty(n, dtype=np.int64)
        seqs[order] = seq
        return TickChunk(symbol_ids, round_to_tick(prices), seqs)

    def fx_step(self, time_s: float) -> F64:
        """Every FX pair moved to trading time ``time_s``, rounded to its quoting precision."""
        if not len(self.fx_log_rate):
            return np.zeros(0)
        dt = max(time_s - self.fx_t, 0.0) / TRADING_SECONDS_PER_YEAR
        self.fx_t = max(time_s, self.fx_t)
        noise = self.rng.standard_normal(len(self.fx_log_rate))
        self.fx_log_rate += self.fx_vol * np.sqrt(dt) * noise - 0.5 * self.fx_vol**2 * dt
        rates = np.exp(self.fx_log_rate)
        return np.array(
            [round(float(r), int(d)) for r, d in zip(rates, self._fx_decimals, strict=True)]
        )


def round_to_tick(prices: F64) -> F64:
    """Round to the 0.01 tick, never below one tick."""
    rounded: F64 = np.maximum(np.round(prices / TICK_SIZE) * TICK_SIZE, TICK_SIZE)
    # Rounding through the division leaves 229.87000000000003; a second round gives 229.87.
    return np.round(rounded, 2)
