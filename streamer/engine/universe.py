"""Symbols, index membership and FX: one owner for the arrays the kernels read.

Membership is a list of entries ``(symbol, index, q)`` kept sorted by symbol, so the entries
of one symbol are a contiguous row (CSR: ``row_ptr[sid]:row_ptr[sid + 1]``).  Ticks touch rows;
index sums are scattered from rows with one ``np.bincount``.

:class:`Universe` is the only writer of membership, weights and FX factors.  Its mutation
methods (insert, remove, reprice, scale shares, set parameters, set equal weights, update FX)
rebuild the derived arrays (rows, per-index segments, FX-converted weights) before they return
and bump :attr:`Universe.version`, which every cache of derived figures outside keys on.
Mutations are rare (corporate actions, FX moves), so they rebuild wholesale.

The per-symbol market arrays of :class:`SymbolBook` (price, last ts and seq, held price, ...)
have two writers by design: tick screening (``quality``), which writes them per tick through
memoryviews, and :meth:`Universe.reprice` for price-adjusting corporate actions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from streamer.config import ConstituentSpec
from streamer.engine.arrays import (
    F64,
    I64,
    MAX_TS,
    NO_SEQ,
    NO_TS,
    Mask,
    concatenated_ranges,
    float_cells,
    int_cells,
)
from streamer.engine.fx import FxBook
from streamer.engine.weighting import Weighting

__all__ = ["F64", "I64", "NO_SEQ", "NO_TS", "Mask", "Membership", "SymbolBook", "Universe"]


class SymbolCells:
    """The per-symbol arrays of a ``SymbolBook`` as memoryviews, for per-tick code."""

    __slots__ = (
        "floor_ts",
        "fresh_ns",
        "held",
        "last_seq",
        "last_ts",
        "price",
        "session_close",
        "session_open",
        "source_ts",
    )

    def __init__(self, book: SymbolBook) -> None:
        self.price = float_cells(book.price)
        self.held = float_cells(book.held)
        self.last_ts = int_cells(book.last_ts)
        self.last_seq = int_cells(book.last_seq)
        self.floor_ts = int_cells(book.floor_ts)
        self.source_ts = int_cells(book.source_ts)
        self.fresh_ns = int_cells(book.fresh_ns)
        self.session_open = int_cells(book.session_open)
        self.session_close = int_cells(book.session_close)


class SymbolIds(dict[str, int]):
    """symbol -> sid; -1 for an unknown symbol, so lookups run as one C-level map()."""

    def __missing__(self, symbol: str) -> int:
        return -1


# name -> fill value of every per-symbol array; the order is the checkpoint's.
MARKET_COLUMNS: dict[str, float | int] = {
    "price": math.nan,  # last accepted, constituent currency
    "held": math.nan,  # a big move waiting for confirmation
    "last_ts": NO_TS,  # newest accepted tick ts
    "last_seq": NO_SEQ,
    "floor_ts": NO_TS,  # effective time of the last price-adjusting action
    "source_ts": 0,  # ts of the last accepted tick (or seed)
    "fresh_ns": 0,  # market clock at the last accepted tick
}
# Per symbol, the session its ticks must be stamped in: [session_open, session_close].
SESSION_COLUMNS: dict[str, int] = {"session_open": NO_TS, "session_close": MAX_TS}


class SymbolBook:
    """Per-symbol state, indexed by a dense symbol id (sid), grown on demand."""

    price: F64
    held: F64
    last_ts: I64
    last_seq: I64
    floor_ts: I64
    source_ts: I64
    fresh_ns: I64
    session_open: I64
    session_close: I64

    def __init__(self, capacity: int = 64) -> None:
        self.ids: dict[str, int] = SymbolIds()
        self.names: list[str] = []
        self.currency: list[str] = []
        capacity = max(capacity, 8)
        for name, fill in {**MARKET_COLUMNS, **SESSION_COLUMNS}.items():
            dtype = np.float64 if isinstance(fill, float) else np.int64
            setattr(self, name, np.full(capacity, fill, dtype=dtype))
        self.floors_set = False  # any floor_ts set: the check can be skipped until one is
        self.gated = False  # any session bound set: the check can be skipped until one is
        self.cells = SymbolCells(self)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, symbol: str, currency: str, fresh_ns: int) -> int:
        sid = len(self.names)
        if sid == len(self.price):
            self._grow(2 * sid)
        self.ids[symbol] = sid
        self.names.append(symbol)
        self.currency.append(currency)
        self.fresh_ns[sid] = fresh_ns
        return sid

    def _grow(self, capacity: int) -> None:
        for name, fill in {**MARKET_COLUMNS, **SESSION_COLUMNS}.items():
            old: npt.NDArray[np.generic] = getattr(self, name)
            grown = np.full(capacity, fill, dtype=old.dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)
        self.cells = SymbolCells(self)

    def load(
        self, names: list[str], currencies: list[str], columns: dict[str, npt.NDArray[np.generic]]
    ) -> None:
        """Replace every symbol and its market data (a restored checkpoint)."""
        self.ids = SymbolIds((name, sid) for sid, name in enumerate(names))
        self.names = list(names)
        self.currency = list(currencies)
        capacity = max(8, 2 * len(names))
        for name, fill in {**MARKET_COLUMNS, **SESSION_COLUMNS}.items():
            dtype = np.float64 if isinstance(fill, float) else np.int64
            array = np.full(capacity, fill, dtype=dtype)
            if name in columns:
                array[: len(names)] = columns[name]
            setattr(self, name, array)
        self.floors_set = bool((self.floor_ts[: len(names)] != NO_TS).any())
        self.gated = False
        self.cells = SymbolCells(self)

    def market_columns(self) -> dict[str, npt.NDArray[np.generic]]:
        """The market data of every symbol, column by column (copies)."""
        n = len(self)
        return {name: getattr(self, name)[:n].copy() for name in MARKET_COLUMNS}

    def lookup(self, symbols: list[str]) -> I64:
        """Symbol ids, -1 for unknown symbols."""
        return np.fromiter(map(self.ids.__getitem__, symbols), dtype=np.int64, count=len(symbols))

    def set_sessions(self, opens: I64, closes: I64) -> None:
        """The session every symbol's ticks must be stamped in (per sid, ``len(self)`` each)."""
        n = len(self)
        self.session_open[:n] = opens
        self.session_close[:n] = closes
        self.gated = bool((opens != NO_TS).any() or (closes != MAX_TS).any())


MEMBER_COLUMNS = ("sid", "index", "shares", "iwf", "awf", "withholding", "q", "fx_slot")


class Membership:
    """Entries ``(sid, index, params, q)`` sorted by sid, with CSR rows and FX slots.

    Written only by :class:`Universe`; everything below "derived" follows from the columns.
    """

    def __init__(self) -> None:
        self.sid: I64 = np.zeros(0, dtype=np.int64)
        self.index: I64 = np.zeros(0, dtype=np.int64)
        self.shares: F64 = np.zeros(0)
        self.iwf: F64 = np.zeros(0)
        self.awf: F64 = np.zeros(0)
        self.withholding: F64 = np.zeros(0)
        self.q: F64 = np.zeros(0)
        self.fx_slot: I64 = np.zeros(0, dtype=np.int64)
        # Derived:
        self.row_ptr: I64 = np.zeros(1, dtype=np.int64)
        self.qfx: F64 = np.zeros(0)  # q * fx factor, NaN where the FX rate is not known yet
        self.qfx0: F64 = np.zeros(0)  # qfx with NaN as 0: for scattering deltas
        self.count: I64 = np.zeros(0, dtype=np.int64)  # constituents per index
        # The same entries ordered by index (CSC), for one-pass segment reductions:
        self.by_index: I64 = np.zeros(0, dtype=np.int64)  # entry positions, sorted by index
        self.sid_by_index: I64 = np.zeros(0, dtype=np.int64)
        self.qfx0_by_index: F64 = np.zeros(0)
        self.nonempty: I64 = np.zeros(0, dtype=np.int64)  # indices with at least one entry
        self.segment_starts: I64 = np.zeros(0, dtype=np.int64)  # their first CSC position

    def __len__(self) -> int:
        return len(self.sid)

    def append(self, **columns: npt.NDArray[np.generic]) -> None:
        for name in MEMBER_COLUMNS:
            setattr(self, name, np.concatenate([getattr(self, name), columns[name]]))

    def keep(self, mask: Mask) -> None:
        for name in MEMBER_COLUMNS:
            setattr(self, name, getattr(self, name)[mask])

    def rebuild(self, n_symbols: int, n_indices: int, fx_factor: F64) -> None:
        """Re-sort by (sid, index) and derive rows, counts and FX-converted weights."""
        order = np.lexsort((self.index, self.sid))
        for name in MEMBER_COLUMNS:
            setattr(self, name, getattr(self, name)[order])
        self.row_ptr = np.searchsorted(self.sid, np.arange(n_symbols + 1)).astype(np.int64)
        self.count = np.bincount(self.index, minlength=n_indices).astype(np.int64)
        self.by_index = np.argsort(self.index, kind="stable").astype(np.int64)
        self.sid_by_index = self.sid[self.by_index]
        self.nonempty = np.flatnonzero(self.count).astype(np.int64)
        ends = np.cumsum(self.count)
        self.segment_starts = (ends - self.count)[self.nonempty]
        self.refresh_fx(fx_factor)

    def refresh_fx(self, fx_factor: F64) -> None:
        self.qfx = self.q * fx_factor[self.fx_slot]
        self.qfx0 = np.where(np.isfinite(self.qfx), self.qfx, 0.0)
        self.qfx0_by_index = self.qfx0[self.by_index]

    def of_index(self, j: int) -> I64:
        return np.flatnonzero(self.index == j)

    def find(self, sid: int, j: int) -> int:
        """Entry position of (sid, index j), or -1."""
        start, stop = int(self.row_ptr[sid]), int(self.row_ptr[sid + 1])
        hits = np.flatnonzero(self.index[start:stop] == j)
        return start + int(hits[0]) if len(hits) else -1

    def spans(self, sids: I64) -> tuple[I64, I64]:
        """First entry position and entry count of the row of each of ``sids``."""
        starts = self.row_ptr.take(sids)
        return starts, self.row_ptr.take(sids + 1) - starts

    def rows(self, sids: I64) -> I64:
        """Entry positions of every row in ``sids``, concatenated (vectorized CSR gather)."""
        return concatenated_ranges(*self.spans(sids))

    def row_of(self, sid: int) -> I64:
        """Entry positions of one symbol's row."""
        return np.arange(int(self.row_ptr[sid]), int(self.row_ptr[sid + 1]), dtype=np.int64)


class Universe:
    """Symbols, membership and FX of every index, with the mutation API of the engine."""

    def __init__(self, index_currencies: Sequence[str], weightings: Sequence[Weighting]) -> None:
        self.book = SymbolBook()
        self.members = Membership()
        self.fx = FxBook()
        self.index_currencies = list(index_currencies)
        self.weightings = list(weightings)
        self.n_indices = len(self.index_currencies)
        # Bumped by every mutation of membership or weights: caches of rows or weights are
        # valid for one version.
        self.version = 0
        # Bumped when the set of (symbol, index) entries changes: caches of per-index counts
        # or of which symbols an index holds are valid for one layout.
        self.layout = 0

    # ------------------------------------------------------------------ reading

    def rows_of_index(self, j: int) -> I64:
        return self.members.of_index(j)

    def indices_of_symbol(self, sid: int) -> list[int]:
        indices: list[int] = self.members.index[self.members.row_of(sid)].tolist()
        return indices

    def is_member(self, sid: int, j: int) -> bool:
        return self.members.find(sid, j) >= 0

    def value(self, rows: I64) -> F64:
        """Each entry's value in index currency at current prices (price * fx * q)."""
        m = self.members
        value: F64 = self.book.price[m.sid[rows]] * m.qfx[rows]
        return value

    def index_value(self, j: int) -> float:
        """sum(price * fx * q) of index j's priced members."""
        return float(np.nansum(self.value(self.rows_of_index(j))))

    def fx_factor(self, currency: str, j: int) -> float:
        """The rate converting ``currency`` into index j's currency (NaN while unknown)."""
        slot = self.fx.slot(currency, self.index_currencies[j])
        return float(self.fx.factor[slot])

    def price(self, sid: int) -> float:
        return float(self.book.price[sid])

    # ------------------------------------------------------------------ mutations

    def add_symbol(self, symbol: str, currency: str, fresh_ns: int) -> int:
        """The sid of ``symbol``, added (unpriced) if new."""
        sid = self.book.ids.get(symbol)
        if sid is None:
            sid = self.book.add(symbol, currency, fresh_ns)
        return sid

    def add_symbols(self, symbols: Sequence[tuple[str, str]], fresh_ns: int) -> None:
        """Make symbols known (unpriced, held by no index) that something other than an index
        values, e.g. fund holdings and listings; rows are rebuilt so every sid has one."""
        before = len(self.book)
        for symbol, currency in symbols:
            self.add_symbol(symbol, currency, fresh_ns)
        if len(self.book) != before or len(self.members.row_ptr) != len(self.book) + 1:
            self._rebuild()

    def insert(
        self,
        j: int,
        specs: Sequence[ConstituentSpec],
        seed_ts: int,
        fresh_ns: int,
        equal_value: float | None = None,
    ) -> list[int]:
        """Add constituents to index j (new symbols, seed prices, q by the index's method).

        ``equal_value``: for an equal-weighted index already weighted, the value each new
        member starts with.  Returns the sids whose price was seeded here (their first
        price: the caller recomputes the indices that hold them).
        """
        columns, seeded = self._new_members(j, specs, seed_ts, fresh_ns, equal_value)
        if columns:
            self.members.append(**columns)
        self._rebuild()
        return seeded

    def populate(self, members: Sequence[Sequence[ConstituentSpec]], fresh_ns: int) -> None:
        """Add every index's constituents at once (one append, one rebuild): index j gets
        members[j].  Appending index by index copied the membership so far each time: 36 s
        for 10,000 indices of 40 members; columns built per index, 2 s."""
        if not self._populate_columns(members):
            parts = [self._new_members(j, specs, 0, fresh_ns, None)[0]
                     for j, specs in enumerate(members)]  # fmt: skip
            parts = [p for p in parts if p]
            if parts:
                self.members.append(
                    **{name: np.concatenate([p[name] for p in parts]) for name in MEMBER_COLUMNS}
                )
        self._rebuild()

    def _populate_columns(self, members: Sequence[Sequence[ConstituentSpec]]) -> bool:
        """The common case of :meth:`populate`, one column at a time over every index: every
        symbol already known and priced (no seeding).  False (nothing changed) otherwise."""
        flat = [spec for specs in members for spec in specs]
        if not flat:
            return True
        book = self.book
        sids = book.lookup([spec.symbol for spec in flat])
        if (sids < 0).any() or np.isnan(book.price[sids]).any():
            return False
        n = len(flat)
        counts = np.fromiter(map(len, members), np.int64, len(members))
        index = np.repeat(np.arange(len(members), dtype=np.int64), counts)
        shares = np.fromiter((spec.shares for spec in flat), np.float64, n)
        iwf = np.fromiter((spec.iwf for spec in flat), np.float64, n)
        awf = np.fromiter((spec.awf for spec in flat), np.float64, n)
        withholding = np.fromiter((spec.withholding for spec in flat), np.float64, n)
        q = np.empty(n)
        by_weighting: dict[int, list[int]] = {}
        for j, weighting in enumerate(self.weightings[: len(members)]):
            by_weighting.setdefault(id(weighting), []).append(j)
        for js in by_weighting.values():
            rows = np.isin(index, js)
            q[rows] = self.weightings[js[0]].q(shares[rows], iwf[rows], awf[rows])
        fx_slot = self._fx_slots(book.currency, sids, index)
        self.members.append(
            sid=sids, index=index, shares=shares, iwf=iwf, awf=awf,
            withholding=withholding, q=q, fx_slot=fx_slot,
        )  # fmt: skip
        return True

    def _fx_slots(self, symbol_currencies: Sequence[str], sids: I64, index: I64) -> I64:
        """Each entry's FX slot, found per (constituent currency, index currency) pair rather
        than per entry (400,000 entries, a handful of pairs)."""
        codes: dict[str, int] = {}
        symbol_code = np.fromiter(
            (codes.setdefault(c, len(codes)) for c in symbol_currencies), np.int64,
            len(symbol_currencies),
        )  # fmt: skip
        index_code = np.fromiter(
            (codes.setdefault(c, len(codes)) for c in self.index_currencies), np.int64,
            len(self.index_currencies),
        )  # fmt: skip
        names = list(codes)
        pair = symbol_code[sids] * len(names) + index_code[index]
        pairs, positions = np.unique(pair, return_inverse=True)
        slots = np.array(
            [self.fx.slot(names[k // len(names)], names[k % len(names)]) for k in pairs.tolist()],
            dtype=np.int64,
        )
        fx_slot: I64 = slots[positions.reshape(-1)]
        return fx_slot

    def _new_members(
        self,
        j: int,
        specs: Sequence[ConstituentSpec],
        seed_ts: int,
        fresh_ns: int,
        equal_value: float | None,
    ) -> tuple[dict[str, npt.NDArray[np.generic]], list[int]]:
        """The membership columns of ``specs`` in index j (not yet appended), and the sids
        whose price they seeded."""
        if not specs:
            return {}, []
        book = self.book
        seeded: list[int] = []
        sids = []
        for s in specs:
            sid = self.add_symbol(s.symbol, s.currency or self.index_currencies[j], fresh_ns)
            if math.isnan(book.price[sid]) and s.price is not None:
                book.price[sid] = s.price
                book.source_ts[sid] = seed_ts
                # The seed is the price as of seed_ts: a tick stamped before it (late, or
                # delivered again after a restart) is older and must not replace it.
                book.last_ts[sid] = max(int(book.last_ts[sid]), seed_ts)
                seeded.append(sid)
            sids.append(sid)
        shares = np.array([s.shares for s in specs], dtype=np.float64)
        iwf = np.array([s.iwf for s in specs], dtype=np.float64)
        awf = np.array([s.awf for s in specs], dtype=np.float64)
        q = self.weightings[j].q(shares, iwf, awf)
        fx_slot = np.array(
            [self.fx.slot(book.currency[sid], self.index_currencies[j]) for sid in sids],
            dtype=np.int64,
        )
        if equal_value is not None:
            unit = book.price[sids] * self.fx.factor[fx_slot]
            q = equal_value / unit
        columns: dict[str, npt.NDArray[np.generic]] = {
            "sid": np.array(sids, dtype=np.int64),
            "index": np.full(len(sids), j, dtype=np.int64),
            "shares": shares,
            "iwf": iwf,
            "awf": awf,
            "withholding": np.array([s.withholding for s in specs], dtype=np.float64),
            "q": q,
            "fx_slot": fx_slot,
        }
        return columns, seeded

    def remove(self, j: int, sid: int | None = None) -> None:
        """Remove symbol ``sid`` from index j, or every member of j."""
        m = self.members
        drop = m.index == j
        if sid is not None:
            drop &= m.sid == sid
        m.keep(~drop)
        self._rebuild()

    def reprice(self, sid: int, adjust: Callable[[float], float], floor_ts: int) -> None:
        """Adjust a symbol's price (and a held price) for a corporate action; ticks stamped
        before ``floor_ts`` are refused from now on (they carry the unadjusted price)."""
        book = self.book
        book.price[sid] = adjust(float(book.price[sid]))
        if not math.isnan(book.held[sid]):
            # A held move is only a candidate: adjusted to nothing (a special dividend at
            # least its size), it is dropped rather than kept as a price of zero or less.
            held = adjust(float(book.held[sid]))
            book.held[sid] = held if held > 0 and math.isfinite(held) else math.nan
        book.floor_ts[sid] = max(int(book.floor_ts[sid]), floor_ts)
        book.floors_set = True

    def scale_shares(self, rows: I64, factor: float) -> None:
        """Multiply the share count of entries (a split, a rights issue) and requote q."""
        self.members.shares[rows] *= factor
        self._requote(rows, factor)

    def set_params(
        self,
        rows: I64,
        shares: float | None = None,
        iwf: float | None = None,
        awf: float | None = None,
    ) -> None:
        m = self.members
        if shares is not None:
            m.shares[rows] = shares
        if iwf is not None:
            m.iwf[rows] = iwf
        if awf is not None:
            m.awf[rows] = awf
        self._requote(rows, 1.0)

    def requote_index(self, j: int) -> None:
        """Derive q of every member of index j from its parameters again."""
        self._requote(self.rows_of_index(j), 1.0)

    def set_equal_weights(self, j: int, value_per_member: float) -> None:
        """q = value / (price * fx): every member of index j then holds the same value."""
        m = self.members
        rows = m.of_index(j)
        unit = self.book.price[m.sid[rows]] * self.fx.factor[m.fx_slot[rows]]
        m.q[rows] = value_per_member / unit
        self._reweigh()

    def update_fx(self, pair: str, rate: float, ts: int) -> bool:
        """Record a rate (False when older than the one held: nothing changes)."""
        return self.fx.update(pair, rate, ts)

    def refresh_fx(self) -> I64:
        """Recompute FX factors from the rates; returns the indices whose weights moved."""
        previous = self.fx.refresh()
        factor = self.fx.factor
        changed_slots = np.flatnonzero(
            (previous != factor) & ~(np.isnan(previous) & np.isnan(factor))
        )
        if len(changed_slots) == 0:
            return np.zeros(0, dtype=np.int64)
        self._reweigh()
        affected = np.isin(self.members.fx_slot, changed_slots)
        return np.unique(self.members.index[affected])

    def load(
        self,
        names: list[str],
        currencies: list[str],
        market: dict[str, npt.NDArray[np.generic]],
        members: dict[str, npt.NDArray[np.generic]],
        fx_rates: dict[str, float],
        fx_ts: dict[str, int],
    ) -> None:
        """Replace symbols, membership and FX wholesale (a restored checkpoint).  FX slots
        are derived again from the currencies."""
        self.book.load(names, currencies, market)
        self.fx = FxBook()
        for pair, rate in fx_rates.items():
            self.fx.update(pair, rate, fx_ts.get(pair, 0))
        sid = members["sid"].astype(np.int64)
        index = members["index"].astype(np.int64)
        fx_slot = self._fx_slots(currencies, sid, index)
        self.fx.refresh()
        self.members = Membership()
        self.members.append(**{**members, "sid": sid, "index": index, "fx_slot": fx_slot})
        self._rebuild()

    def member_columns(self) -> dict[str, npt.NDArray[np.generic]]:
        """Every entry's stored columns (FX slots are derived, so left out): the live
        arrays, not copies (a checkpoint turns them into bytes at once); copy to keep."""
        m = self.members
        return {name: getattr(m, name) for name in MEMBER_COLUMNS if name != "fx_slot"}

    def _requote(self, rows: I64, share_scale: float) -> None:
        m = self.members
        index = m.index[rows]
        for j in np.unique(index).tolist():
            picked = rows[index == j]
            m.q[picked] = self.weightings[j].requote(
                m.q[picked], m.shares[picked], m.iwf[picked], m.awf[picked], share_scale
            )
        self._reweigh()

    def _reweigh(self) -> None:
        self.members.refresh_fx(self.fx.factor)
        self.version += 1

    def _rebuild(self) -> None:
        self.members.rebuild(len(self.book), self.n_indices, self.fx.factor)
        self.version += 1
        self.layout += 1
