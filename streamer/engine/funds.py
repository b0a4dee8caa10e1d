"""Index funds in the engine: every fund's basket as one holdings matrix over the symbols.

A fund holds, per creation unit, ``shares_i`` of each holding and some cash; its indicative
NAV per unit is::

    iNAV = fee_factor * (sum_i(shares_i * price_i * fx_i) + cash) / units

The holdings of all funds are one :class:`~streamer.engine.universe.Membership` (CSR rows by
symbol, the fund as the "index" column), so a tick batch moves every fund's basket value with
the index kernels' one scatter (``kernels.move_indices``) and a single tick with a few Python
additions over a cached row, exactly as for index sums; there is no per-fund loop.  Basket
values move incrementally from the price each symbol was last valued at (``valued``), so the
engine only says which symbols it accepted ticks for; FX moves, corporate actions and baskets
recompute from scratch.

The fee: the expense ratio accrues per calendar day into ``fee_factor``, which each official
NAV multiplies by ``1 - expense_ratio * days / 365`` (days since the previous NAV's session);
a new basket (the administrator's composition file, fees already paid out of it) starts it at
1 again.  Daily figures (TD per period, TE per window) come from ``streamer.derived.tracking``
over the stored NAV history, the same mathematics as ``streamer tracking``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import msgspec
import numpy as np

from streamer.derived import tracking
from streamer.engine import kernels
from streamer.engine.arrays import F64, I64, float_cells
from streamer.engine.universe import Membership, Universe
from streamer.fund_config import Basket, FundDefinition

BPS = 10_000.0
DAYS_PER_YEAR = 365.0
# NAV history kept per fund: three years of sessions for the longest TE window, plus the
# year-to-date and inception bases kept apart (see NavHistory).
HISTORY_SESSIONS = tracking.THREE_YEARS + 1


class NavRecord(msgspec.Struct, frozen=True, gc=False):
    """One official NAV of one fund (``P:navs:<id>``) with its daily tracking figures."""

    fund: str
    session: str  # ISO date
    close_ns: int
    nav: float  # per unit, after the day's fee accrual
    basket_nav: float  # per unit, before it (closing prices, cash)
    fee_factor: float
    index: str  # the tracked series
    index_close: float
    td_day_bps: float  # NaN when there is no earlier NAV
    td_mtd_bps: float
    td_ytd_bps: float
    td_inception_bps: float
    te_1y_bps: float  # NaN with fewer than 2 observations
    te_3y_bps: float  # NaN until three years of sessions
    observations: int


class FundLevel(msgspec.Struct, frozen=True, gc=False):
    """A fund's live figures at one moment (``P:fund:<id>``)."""

    fund: str
    inav: float  # NaN until every holding has a price
    listing: float  # listing price used (mid or last; NaN: none yet)
    premium_bps: float
    td_bps: float  # intraday: fund return since the last NAV minus the index's since its close
    nav_prev: float  # the base the intraday return runs from
    index: str
    index_level: float
    stale: int
    coverage: float
    holdings: int
    source_ts: int  # ts of the newest listing tick (0: none)


class FundRow:
    """One symbol's holdings as Python lists, for the per-tick path."""

    __slots__ = ("entries", "funds", "ids")

    def __init__(self, entries: list[tuple[int, float]], funds: list[int], ids: list[str]):
        self.entries = entries  # (fund, shares * fx) of each fund holding the symbol
        self.funds = funds
        self.ids = ids  # their ids, in fund order (the batch's changes when it moved alone)


@dataclass(frozen=True, slots=True)
class FundTable:
    """Every fund at once, for metrics: live arrays and the latest NAV's daily figures."""

    funds: Sequence[str]
    inav: F64
    premium_bps: F64
    td_bps: F64
    figures: Sequence[Mapping[str, float]]


@dataclass(slots=True)
class FundHistory:
    """A fund's official NAVs with the tracked series' closes, oldest first (durable)."""

    sessions: list[str] = field(default_factory=list)
    navs: list[float] = field(default_factory=list)
    index_closes: list[float] = field(default_factory=list)

    def add(self, session: str, nav: float, index_close: float) -> None:
        if self.sessions and self.sessions[-1] == session:  # a close taken twice: the last
            self.navs[-1], self.index_closes[-1] = nav, index_close
            return
        self.sessions.append(session)
        self.navs.append(nav)
        self.index_closes.append(index_close)


@dataclass(slots=True)
class FundState:
    """What of the funds is checkpointed: nothing derived."""

    ids: list[str]  # the funds, in definition order
    baskets: list[Basket]  # current composition per fund (config, or the last basket action)
    fee_factor: F64
    nav_base: F64  # intraday TD runs from this NAV ...
    index_base: F64  # ... and this level of the tracked series (NaN: not yet)
    history: list[FundHistory]


class FundBook:
    """Holdings, cash, bases and NAV history of every fund; the engine owns it."""

    def __init__(
        self,
        definitions: Sequence[FundDefinition],
        universe: Universe,
        state: FundState | None = None,
    ) -> None:
        self.definitions = list(definitions)
        self.ids = [d.id for d in self.definitions]
        self.slot = {fid: f for f, fid in enumerate(self.ids)}
        self.universe = universe
        n = len(self.definitions)
        self.n_funds = n
        self.state = state or FundState(
            ids=list(self.ids),
            baskets=[d.basket for d in self.definitions],
            fee_factor=np.ones(n),
            nav_base=np.full(n, np.nan),
            index_base=np.full(n, np.nan),
            history=[FundHistory() for _ in range(n)],
        )
        self.expense_ratio: F64 = np.array([d.expense_ratio for d in self.definitions])
        self.tracks = [d.tracks for d in self.definitions]
        self.holdings = Membership()
        self.cash: F64 = np.zeros(n)
        self.units: F64 = np.ones(n)
        self.sums: F64 = np.zeros(n)
        self.missing: I64 = np.zeros(n, dtype=np.int64)
        self.valued: F64 = np.zeros(0)  # per sid: the price the sums were last moved to
        self.listing_sid: I64 = np.zeros(n, dtype=np.int64)
        self.listing_of: dict[int, list[int]] = {}
        self._listing_fund = np.zeros(0, dtype=np.int64)  # per sid: its fund, -1 if none
        self.bid: F64 = np.full(n, np.nan)
        self.ask: F64 = np.full(n, np.nan)
        self.quote_ts = np.zeros(n, dtype=np.int64)
        # Funds whose figures changed since they were last taken: a set for the per-tick
        # path (a few funds), a mask for the vector path (up to all of them, no Python loop).
        self.changed: set[int] = set()
        self._changed_mask = np.zeros(n, dtype=np.bool_)
        self._any_masked = False
        self._id_array = np.array(self.ids, dtype=object)
        self._rows: dict[int, FundRow] = {}
        self._moved: FundRow | None = None  # the only row the per-tick path moved, if one
        self._waiting = True  # see ``waiting``
        self._sum_cells = float_cells(self.sums)
        self._valued_cells = float_cells(self.valued)
        self._n_rows = 0
        self.version = 0
        # The daily figures of each fund's latest NAV (derived from the history).
        self.figures: list[dict[str, float]] = [daily_figures(h) for h in self.state.history]

    # ------------------------------------------------------------------ building

    def symbols(self) -> list[tuple[str, str]]:
        """(symbol, currency) of every holding and listing, for the universe's book."""
        out: list[tuple[str, str]] = []
        for d, basket in zip(self.definitions, self.state.baskets, strict=True):
            out.append((d.listing, d.currency))
            out.extend((h.symbol, h.currency or d.currency) for h in basket.holdings)
        return out

    def build(self) -> None:
        """Derive the holdings matrix from the baskets (every symbol is in the book)."""
        book, fx = self.universe.book, self.universe.fx
        sids: list[int] = []
        funds: list[int] = []
        shares: list[float] = []
        slots: list[int] = []
        for f, (d, basket) in enumerate(zip(self.definitions, self.state.baskets, strict=True)):
            for h in basket.holdings:
                sid = book.ids[h.symbol]
                sids.append(sid)
                funds.append(f)
                shares.append(h.shares)
                slots.append(fx.slot(book.currency[sid], d.currency))
            self.cash[f] = basket.cash
            self.units[f] = basket.units
        count = len(sids)
        members = Membership()
        members.append(
            sid=np.array(sids, dtype=np.int64),
            index=np.array(funds, dtype=np.int64),
            shares=np.array(shares, dtype=np.float64),
            iwf=np.ones(count),
            awf=np.ones(count),
            withholding=np.zeros(count),
            q=np.array(shares, dtype=np.float64),
            fx_slot=np.array(slots, dtype=np.int64),
        )
        self._n_rows = len(book)
        members.rebuild(self._n_rows, self.n_funds, fx.factor)
        self.holdings = members
        self.listing_sid = np.array([book.ids[d.listing] for d in self.definitions], np.int64)
        self.listing_of = {}
        for f, sid in enumerate(self.listing_sid.tolist()):
            self.listing_of.setdefault(sid, []).append(f)
        # A listing belongs to one fund (the config refuses a shared one).
        self._listing_fund = np.full(self._n_rows, -1, dtype=np.int64)
        self._listing_fund[self.listing_sid] = np.arange(self.n_funds)
        self.recompute()

    def recompute(self, report_all: bool = True) -> None:
        """Every basket value from scratch (FX moves, actions, baskets, restore, and the
        engine's drift-bounding timer, which reports only the funds that moved)."""
        book = self.universe.book
        members = self.holdings
        members.refresh_fx(self.universe.fx.factor)
        sums, missing = kernels.full_sums(members, book.price, self.n_funds)
        moved = np.flatnonzero((sums != self.sums) | (missing != self.missing))
        self.sums[:] = sums  # in place: the per-tick path holds a view of it
        self.missing = missing
        valued = np.full(max(len(book.price), 8), np.nan)
        valued[: self._n_rows] = book.price[: self._n_rows]
        self.valued = valued
        self._valued_cells = float_cells(self.valued)
        self._rows.clear()
        self.version += 1
        self.changed.update(range(self.n_funds) if report_all else moved.tolist())

    # ------------------------------------------------------------------ market data

    def touch(self, sids: I64) -> None:
        """Move the baskets holding ``sids`` (symbols with newly accepted ticks, each once).

        The steady case (every symbol valued before, no symbol newer than the holdings
        matrix) is a handful of whole-array operations: a zero change scatters nothing."""
        if len(sids) == 0:
            return
        if int(sids.max()) >= self._n_rows:  # symbols added after the matrix was built
            sids = sids[sids < self._n_rows]
        listed = self._listing_fund.take(sids)
        if listed.max() >= 0:
            self._changed_mask[listed[listed >= 0]] = True
            self._any_masked = True
        new = self.universe.book.price.take(sids)
        old = self.valued.take(sids)
        self.valued[sids] = new
        unvalued = np.isnan(old)
        first = None
        if unvalued.any():  # first prices: their funds are recomputed after the moves
            first = sids[unvalued & ~np.isnan(new)]
            keep = ~unvalued
            sids, new, old = sids[keep], new[keep], old[keep]
        delta = kernels.move_indices(self.holdings, sids, new - old, self.sums)
        self._changed_mask |= delta != 0.0
        self._any_masked = True
        if first is not None and len(first):
            self._recompute_holding(first)

    def touch_one(self, sid: int) -> None:
        """``touch`` for one symbol, on Python scalars (the single-tick path)."""
        if sid >= self._n_rows:
            return
        listed = self.listing_of.get(sid)
        if listed is not None:
            self.changed.update(listed)
        new = self.universe.book.cells.price[sid]
        valued = self._valued_cells
        old = valued[sid]
        if new == old:
            return
        valued[sid] = new
        if old != old:
            self._recompute_holding(np.array([sid], dtype=np.int64))
            return
        row = self._rows.get(sid)
        if row is None:
            row = self._row(sid)
        change = new - old
        sums = self._sum_cells
        for f, weight in row.entries:
            sums[f] += change * weight
        if not self.changed and not self._moved:
            self._moved = row  # alone so far: its ids are the batch's changes
        else:
            self.changed.update(row.funds)

    def _row(self, sid: int) -> FundRow:
        m = self.holdings
        start, stop = int(m.row_ptr[sid]), int(m.row_ptr[sid + 1])
        funds = m.index[start:stop].tolist()
        row = FundRow(
            list(zip(funds, m.qfx0[start:stop].tolist(), strict=True)),
            funds,
            [self.ids[f] for f in sorted(set(funds))],
        )
        self._rows[sid] = row
        return row

    def _recompute_holding(self, sids: I64) -> None:
        members = self.holdings
        funds = np.unique(members.index[members.rows(sids)])
        if len(funds) == 0:
            return
        sums, missing = kernels.sums_of(members, self.universe.book.price, funds, self.n_funds)
        self.sums[funds] = sums[funds]
        self.missing[funds] = missing[funds]
        self.changed.update(funds.tolist())

    def quote(self, symbol: str, bid: float, ask: float, ts: int) -> None:
        """A listing's best bid and ask (the premium then uses their mid)."""
        sid = self.universe.book.ids[symbol]
        for f in self.listing_of.get(sid, []):
            if ts >= self.quote_ts[f]:
                self.bid[f], self.ask[f], self.quote_ts[f] = bid, ask, ts
                self.changed.add(f)

    @property
    def has_changes(self) -> bool:
        return self._any_masked or bool(self.changed) or self._moved is not None

    def take_changed(self) -> list[str]:
        """The ids of the funds that changed, in fund order (and forget them)."""
        moved, self._moved = self._moved, None
        if moved is not None:
            if not self.changed and not self._any_masked:
                return list(moved.ids)  # one symbol moved alone (every single-tick batch)
            self.changed.update(moved.funds)
        if self._any_masked:
            mask = self._changed_mask
            if self.changed:
                mask[list(self.changed)] = True
                self.changed.clear()
            out: list[str] = self._id_array[mask].tolist()
            mask[:] = False
            self._any_masked = False
            return out
        if not self.changed:
            return []
        ids = self.ids
        out = [ids[f] for f in sorted(self.changed)]
        self.changed.clear()
        return out

    # ------------------------------------------------------------------ figures

    def inav(self) -> F64:
        """iNAV per unit of every fund (NaN while a holding has no price or FX rate)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            value: F64 = self.state.fee_factor * (self.sums + self.cash) / self.units
        return np.where(self.missing == 0, value, np.nan)

    def listing_price(self) -> F64:
        """The listing price a premium is measured with: the mid when the listing's latest
        quote has a bid and an ask (bid <= ask), else its last traded price."""
        last = self.universe.book.price.take(self.listing_sid)
        two_sided = np.isfinite(self.bid) & np.isfinite(self.ask) & (self.bid <= self.ask)
        mid = (self.bid + self.ask) / 2.0
        price: F64 = np.where(two_sided, mid, last)
        return price

    def premium_bps(self, inav: F64, listing: F64) -> F64:
        """``(listing - iNAV) / iNAV`` in bps: positive at a premium, negative at a discount."""
        with np.errstate(invalid="ignore", divide="ignore"):
            premium: F64 = (listing - inav) / inav * BPS
        return premium

    def intraday_td_bps(self, inav: F64, index_levels: F64) -> F64:
        """Fund return since the last official NAV minus the tracked series' return since
        its previous close (the base pair is set together, see ``close``), in bps."""
        s = self.state
        with np.errstate(invalid="ignore", divide="ignore"):
            td: F64 = ((inav / s.nav_base) - (index_levels / s.index_base)) * BPS
        return td

    def stale_counts(self, stale_symbol: np.ndarray) -> I64:
        mask = np.zeros(self._n_rows, dtype=np.bool_)
        n = min(len(stale_symbol), self._n_rows)
        mask[:n] = stale_symbol[:n]
        return kernels.stale_counts(self.holdings, mask, self.n_funds)

    def levels(
        self, picks: Sequence[int], index_levels: Mapping[str, float], stale_symbol: np.ndarray
    ) -> list[FundLevel]:
        inav = self.inav()
        listing = self.listing_price()
        premium = self.premium_bps(inav, listing)
        levels = np.array([index_levels.get(t, math.nan) for t in self.tracks])
        td = self.intraday_td_bps(inav, levels)
        stale = self.stale_counts(stale_symbol)
        count = self.holdings.count
        book = self.universe.book
        out = []
        for f in picks:
            held = int(count[f]) if f < len(count) else 0
            out.append(
                FundLevel(
                    fund=self.ids[f],
                    inav=float(inav[f]),
                    listing=float(listing[f]),
                    premium_bps=float(premium[f]),
                    td_bps=float(td[f]),
                    nav_prev=float(self.state.nav_base[f]),
                    index=self.tracks[f],
                    index_level=float(levels[f]),
                    stale=int(stale[f]),
                    coverage=(held - int(stale[f])) / held if held else 0.0,
                    holdings=held,
                    source_ts=max(int(book.source_ts[self.listing_sid[f]]), int(self.quote_ts[f])),
                )
            )
        return out

    def table(self, index_levels: Mapping[str, float]) -> FundTable:
        inav = self.inav()
        levels = np.array([index_levels.get(t, math.nan) for t in self.tracks])
        return FundTable(
            funds=self.ids,
            inav=inav,
            premium_bps=self.premium_bps(inav, self.listing_price()),
            td_bps=self.intraday_td_bps(inav, levels),
            figures=self.figures,
        )

    # ------------------------------------------------------------------ the trading day

    @property
    def waiting(self) -> bool:
        """Some fund has no base for its intraday TD yet (checked once per batch: a flag
        until every fund has one)."""
        if self._waiting:
            self._waiting = bool(np.isnan(self.state.nav_base).any())
        return self._waiting

    def establish(self, index_levels: Mapping[str, float]) -> None:
        """Funds without a base take the first one they can: the iNAV and the tracked
        series' level of the same moment (inception, until the first official NAV)."""
        s = self.state
        waiting = np.flatnonzero(np.isnan(s.nav_base))
        if len(waiting) == 0:
            return
        inav = self.inav()
        for f in waiting.tolist():
            level = index_levels.get(self.tracks[f], math.nan)
            if math.isfinite(inav[f]) and math.isfinite(level):
                s.nav_base[f], s.index_base[f] = inav[f], level
                self.changed.add(f)

    def close(self, closes: Mapping[str, float], session: str, close_ns: int) -> list[NavRecord]:
        """The official NAV of every fund tracking one of the series just closed (``closes``:
        series -> close level), from the exact basket value at closing prices with the fee
        accrued since the previous NAV; the pair (NAV, index close) becomes the base of the
        next session's intraday TD."""
        funds = [f for f, t in enumerate(self.tracks) if t in closes]
        if not funds or not _is_session_date(session):
            return []  # an official NAV belongs to a session (none without a calendar)
        self.recompute()
        s = self.state
        with np.errstate(invalid="ignore", divide="ignore"):
            basket_nav = (self.sums + self.cash) / self.units
        records = []
        for f in funds:
            if self.missing[f] or not math.isfinite(basket_nav[f]):
                continue
            history = s.history[f]
            days = _days_between(history.sessions[-1], session) if history.sessions else 0
            if days > 0:
                s.fee_factor[f] *= 1.0 - self.expense_ratio[f] * days / DAYS_PER_YEAR
            nav = float(s.fee_factor[f] * basket_nav[f])
            index_close = closes[self.tracks[f]]
            history.add(session, nav, index_close)
            if len(history.sessions) > HISTORY_SESSIONS + 400:
                _trim(history)
            s.nav_base[f], s.index_base[f] = nav, index_close
            records.append(self._record(f, session, close_ns, float(basket_nav[f]), nav))
            self.changed.add(f)
        return records

    def _record(
        self, f: int, session: str, close_ns: int, basket_nav: float, nav: float
    ) -> NavRecord:
        history = self.state.history[f]
        figures = self.figures[f] = daily_figures(history)
        return NavRecord(
            fund=self.ids[f],
            session=session,
            close_ns=close_ns,
            nav=nav,
            basket_nav=basket_nav,
            fee_factor=float(self.state.fee_factor[f]),
            index=self.tracks[f],
            index_close=history.index_closes[-1],
            observations=len(history.sessions) - 1,
            **figures,
        )

    def replace_basket(self, fund_id: str, basket: Basket) -> bool:
        """A new composition from the next session on; the fee factor starts again at 1
        (the administrator's file is the portfolio after fees).  False: unknown fund."""
        f = self.slot.get(fund_id)
        if f is None:
            return False
        self.state.baskets[f] = basket
        self.state.fee_factor[f] = 1.0
        self.build()
        return True

    def credit(self, symbol: str, per_share: float) -> None:
        """Cash per share of ``symbol`` (its currency) into every fund holding it: a dividend
        (net of withholding) or special dividend on its ex-date, the value of spun-off shares,
        or (negative) a rights subscription.  So the fund's value follows its total return,
        as its tracked NTR series does."""
        sid = self.universe.book.ids[symbol]
        if sid < 0 or sid >= self._n_rows:
            return
        rows = self.holdings.row_of(sid)
        for f, value in zip(
            self.holdings.index[rows].tolist(), self.holdings.qfx0[rows].tolist(), strict=True
        ):
            self.cash[f] += per_share * value
            basket = self.state.baskets[f]
            self.state.baskets[f] = msgspec.structs.replace(basket, cash=float(self.cash[f]))
            self.changed.add(f)

    def scale_holding(self, symbol: str, factor: float) -> None:
        """A split or rights issue: every fund holding ``symbol`` holds ``factor`` times the
        shares (its price was divided in the book), so baskets keep their value."""
        sid = self.universe.book.ids[symbol]
        if sid < 0 or sid >= self._n_rows:
            return
        rows = self.holdings.row_of(sid)
        if len(rows) == 0:
            return
        self.holdings.shares[rows] *= factor
        self.holdings.q[rows] *= factor
        for f in np.unique(self.holdings.index[rows]).tolist():
            basket = self.state.baskets[f]
            self.state.baskets[f] = Basket(
                holdings=tuple(
                    msgspec.structs.replace(h, shares=h.shares * factor)
                    if h.symbol == symbol
                    else h
                    for h in basket.holdings
                ),
                cash=basket.cash,
                units=basket.units,
            )


def daily_figures(history: FundHistory) -> dict[str, float]:
    """TD (last day, MTD, YTD, inception) and TE (1y, 3y) in bps from a NAV history, by the
    mathematics of ``streamer tracking`` (``streamer.derived.tracking``)."""
    nan = math.nan
    figures = {
        "td_day_bps": nan,
        "td_mtd_bps": nan,
        "td_ytd_bps": nan,
        "td_inception_bps": nan,
        "te_1y_bps": nan,
        "te_3y_bps": nan,
    }
    if len(history.sessions) < 2:
        return figures
    aligned = tracking.AlignedSeries(
        dates=tuple(date.fromisoformat(s) for s in history.sessions),
        fund=np.array(history.navs),
        index=np.array(history.index_closes),
    )
    day, mtd, ytd, inception = tracking.standard_periods(aligned)
    figures.update(
        td_day_bps=day.bps, td_mtd_bps=mtd.bps, td_ytd_bps=ytd.bps, td_inception_bps=inception.bps
    )
    one_year = tracking.window_tracking_error(aligned, tracking.ONE_YEAR).bps
    figures["te_1y_bps"] = nan if one_year is None else one_year
    if aligned.observations >= tracking.THREE_YEARS:
        three = tracking.window_tracking_error(aligned, tracking.THREE_YEARS).bps
        figures["te_3y_bps"] = nan if three is None else three
    return figures


def _is_session_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _days_between(earlier: str, later: str) -> int:
    return (date.fromisoformat(later) - date.fromisoformat(earlier)).days


def _trim(history: FundHistory) -> None:
    """Keep the first NAV (inception) and the last HISTORY_SESSIONS plus this year's."""
    keep_from = len(history.sessions) - HISTORY_SESSIONS
    year_start = history.sessions[-1][:4]
    while keep_from > 1 and history.sessions[keep_from - 1][:4] == year_start:
        keep_from -= 1
    for column in (history.sessions, history.navs, history.index_closes):
        del column[1:keep_from]
