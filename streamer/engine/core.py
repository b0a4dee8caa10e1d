"""The calculation engine: pure and synchronous (sans-I/O).

``Engine.apply`` takes one micro-batch of decoded messages and returns what changed; it never
waits and never touches a socket, so the async shell only does read -> decode -> apply ->
publish, and every rule here is tested without a broker.

State per index j: ``sums[j] = sum_i(price_i * fx_i * q_ij)`` over priced constituents,
``missing[j]`` unpriced constituents, ``divisor[j]`` (NaN until the index is established, i.e.
until its first complete set of prices).  Ticks move sums incrementally; FX moves, first prices
and corporate actions recompute the indices they touch from scratch.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from streamer.config import IndexDefinition, QualitySettings
from streamer.engine import kernels
from streamer.engine.actions import apply_action
from streamer.engine.fx import FxBook
from streamer.engine.quality import screen_one, screen_round, screen_runs
from streamer.engine.results import (
    BAD_PRICE,
    OUT_OF_ORDER,
    REJECTED,
    UNKNOWN_SYMBOL,
    AuditRecord,
    BatchResult,
    SeriesLevel,
)
from streamer.engine.returns import ReturnsBook
from streamer.engine.universe import (
    F64,
    I64,
    NO_SEQ,
    Mask,
    Membership,
    SymbolBook,
    float_cells,
    int_cells,
)
from streamer.errors import ConfigError
from streamer.wire import Action, FxRate, ReferenceLevel, Tick

# Batches up to this size take the per-tick path: below it numpy's per-call overhead loses
# (measured crossover on 500 symbols / 15 indices: about 28 ticks).
SMALL_BATCH = 24
# A divisor ratio this close to 1 is rounding, not an event (e.g. a cap-weighted split).
DIVISOR_EPSILON = 1e-13
# Equal-weighted indices hold this much index currency of every member at each rebalance.
EQUAL_WEIGHT_NOTIONAL = 1e6

Clock = Callable[[], int]
NO_TS_VALUE = int(np.iinfo(np.int64).min)


def _int_column(values: list[int | None], missing: int) -> I64:
    """An int64 column of optional ints, ``missing`` where a value is None."""
    try:
        return np.fromiter(values, np.int64, len(values))  # the common case: all present
    except TypeError:
        pass
    if values.count(None) == len(values):
        return np.full(len(values), missing, dtype=np.int64)
    return np.fromiter([missing if v is None else v for v in values], np.int64, len(values))


class Row:
    """One symbol's membership as Python lists, for the per-tick path."""

    __slots__ = ("entries", "moves", "series")

    def __init__(
        self, entries: list[tuple[int, float]], moves: list[int], series: list[str]
    ) -> None:
        self.entries = entries  # (index, q * fx) of each index holding the symbol
        self.moves = moves  # the indices its price moves (q * fx not 0: FX rate known)
        self.series = series  # their published series, once established


class Engine:
    def __init__(
        self,
        definitions: Sequence[IndexDefinition],
        quality: QualitySettings | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        quality = quality or QualitySettings()
        self.clock = clock
        self.small_batch = SMALL_BATCH
        self.band = quality.max_move_pct / 100.0
        self.stale_after_ns = int(quality.stale_after_s * 1e9)
        self.definitions = list(definitions)
        self.index_ids = [d.id for d in self.definitions]
        self.slot = {d.id: j for j, d in enumerate(self.definitions)}
        self.methods = [d.method for d in self.definitions]
        self.currencies = [d.currency for d in self.definitions]
        n = len(self.definitions)
        self.n_indices = n
        self.configured_divisor: F64 = np.array(
            [d.divisor if d.divisor is not None else np.nan for d in self.definitions]
        )
        self.base_value: F64 = np.array(
            [d.base_value if d.base_value is not None else np.nan for d in self.definitions]
        )
        self.divisor: F64 = np.full(n, np.nan)
        self.sums: F64 = np.zeros(n)
        self.missing: I64 = np.zeros(n, dtype=np.int64)
        # Per index, the ts of the newest accepted tick of its constituents (0: none yet).
        # The per-tick path raises it as it goes; the vector path marks the symbols it saw in
        # ``_stamped``, folded in when levels are read.  Invariant: outside the marked
        # symbols, every member's source_ts is folded into its indices' newest_ts.
        self.newest_ts: I64 = np.zeros(n, dtype=np.int64)
        self._stamped: Mask = np.zeros(0, dtype=np.bool_)
        self._any_stamped = False
        # The per-tick path's views of these arrays, which are therefore only written in place.
        self._sum_cells = float_cells(self.sums)
        self._newest_cells = int_cells(self.newest_ts)
        # Stale constituents per index, for the stale-symbol mask it was counted from.
        self._stale_counts: tuple[tuple[bytes, int], I64] | None = None
        self.dirty: Mask = np.zeros(n, dtype=np.bool_)
        self.returns = ReturnsBook(n)
        self.book = SymbolBook()
        self.fx = FxBook()
        self.members = Membership()
        self.max_drift = 0.0
        self.applied_actions = 0
        self._pending: list[tuple[int, int, Action]] = []
        self._order = itertools.count()
        self._seen_actions: set[str] = set()
        self.references: dict[str, tuple[float, int]] = {}
        self.series: list[tuple[str, int, str]] = [
            (sid, j, variant)
            for j, d in enumerate(self.definitions)
            for sid, variant in zip(d.series_ids(), d.variants, strict=True)
        ]
        self.series_ids = tuple(s for s, _, _ in self.series)
        self._series_names = np.array(self.series_ids, dtype=object)
        self._series_of_index: list[list[str]] = [[] for _ in range(n)]
        for s, j, _ in self.series:
            self._series_of_index[j].append(s)
        # The series of each index once it is established (a divisor, once set, stays set).
        self._publishable_series: list[list[str]] = [[] for _ in range(n)]
        self._series_index = np.array([j for _, j, _ in self.series], dtype=np.int64)
        # Per-symbol rows as Python lists, for the per-tick path; cleared whenever weights or
        # the set of established indices change.
        self._row_cache: dict[int, Row] = {}
        self._any_dirty = False
        # The per-tick path marks changes here, cheaper than in ``dirty``: indices, or the rows
        # of symbols that moved alone.
        self._dirty_few: set[int] = set()
        self._moved_rows: list[Row] = []
        self._series_by_id = {s: (j, v) for s, j, v in self.series}
        self._series_position = {s: k for k, (s, _, _) in enumerate(self.series)}
        self._maybe_unestablished = True
        self._load_constituents()

    # ------------------------------------------------------------------ construction

    def _load_constituents(self) -> None:
        now = self.clock()
        seed: dict[str, tuple[float, str]] = {}
        rows: list[tuple[int, int, float, float, float, float, float]] = []
        for j, d in enumerate(self.definitions):
            for c in d.constituents:
                currency = c.currency or d.currency
                sid = self.book.ids.get(c.symbol)
                if sid is None:
                    sid = self.book.add(c.symbol, currency, now)
                elif self.book.currency[sid] != currency:
                    raise ConfigError(
                        f"{d.source or d.id}: field `constituents[{c.symbol}].currency`: "
                        f"{currency} here but {self.book.currency[sid]} in another index"
                    )
                if c.price is not None:
                    if c.symbol in seed and not math.isclose(
                        seed[c.symbol][0], c.price, rel_tol=1e-12
                    ):
                        raise ConfigError(
                            f"{d.source or d.id}: field `constituents[{c.symbol}].price`: "
                            f"{c.price} here but {seed[c.symbol][0]} in {seed[c.symbol][1]}"
                        )
                    seed[c.symbol] = (c.price, d.source or d.id)
                    self.book.price[sid] = c.price
                rows.append(
                    (
                        sid,
                        j,
                        c.shares,
                        c.iwf,
                        c.awf,
                        c.withholding,
                        self._q(j, c.shares, c.iwf, c.awf),
                    )
                )
        self._append_entries(rows)
        self._rebuild()
        sums, self.missing = kernels.full_sums(self.members, self.book.price, self.n_indices)
        self.sums[:] = sums
        self._establish(np.arange(self.n_indices))

    def _q(self, j: int, shares: float, iwf: float, awf: float) -> float:
        """Index shares: cap: shares*IWF*AWF; price: the weighting factor (AWF, default 1);
        equal: set at the first complete prices and at each rebalance (1 until then, which
        only marks the member as present: an index publishes nothing before it is set)."""
        method = self.methods[j]
        if method == "cap":
            return shares * iwf * awf
        if method == "price":
            return awf
        return 1.0

    def _append_entries(
        self, rows: Sequence[tuple[int, int, float, float, float, float, float]]
    ) -> None:
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        sid = np.array(columns[0], dtype=np.int64)
        index = np.array(columns[1], dtype=np.int64)
        fx_slot = np.array(
            [self.fx.slot(self.book.currency[s], self.currencies[j]) for s, j, *_ in rows],
            dtype=np.int64,
        )
        shares, iwf, awf, withholding, q = (np.array(c, dtype=np.float64) for c in columns[2:])
        self.members.append(sid, index, shares, iwf, awf, withholding, q, fx_slot)

    def _rebuild(self) -> None:
        self.members.rebuild(len(self.book), self.n_indices, self.fx.factor)
        self._row_cache.clear()

    def _refresh_fx(self) -> None:
        self.members.refresh_fx(self.fx.factor)
        self._row_cache.clear()

    def _row(self, sid: int) -> Row:
        row = self._row_cache.get(sid)
        if row is None:
            m = self.members
            start, stop = int(m.row_ptr[sid]), int(m.row_ptr[sid + 1])
            indices, weights = m.index[start:stop].tolist(), m.qfx0[start:stop].tolist()
            entries = list(zip(indices, weights, strict=True))
            moves = [j for j, weight in entries if weight != 0.0]
            series = [s for j in moves for s in self._publishable_series[j]]
            row = self._row_cache[sid] = Row(entries, moves, series)
        return row

    def _mark_dirty(self, indices: I64 | Mask | slice) -> None:
        self.dirty[indices] = True
        self._any_dirty = True

    # ------------------------------------------------------------------ the batch entry point

    def apply(
        self,
        ticks: Sequence[Tick] = (),
        fx: Sequence[FxRate] = (),
        actions: Sequence[Action] = (),
        references: Sequence[ReferenceLevel] = (),
        received_ns: int | None = None,
    ) -> BatchResult:
        """Apply one micro-batch; returns outcome counts, changed series and audit records."""
        now = self.clock() if received_ns is None else received_ns
        result = BatchResult()
        for action in actions:
            self._submit(action, now, result)
        if len(ticks) <= self.small_batch and self._steady:
            # A few ticks: straight from the messages to Python scalars, no arrays on the way.
            if fx:
                self._apply_fx(fx, now, result)
            if len(ticks) == 1:
                t = ticks[0]
                self._screen_and_move_one(
                    self.book.ids[t.symbol],
                    t.price,
                    now if t.ts is None else t.ts,
                    NO_SEQ if t.seq is None else t.seq,
                    now,
                    result,
                )
            elif ticks:
                ids = self.book.ids
                self._screen_and_move_each(
                    [ids[t.symbol] for t in ticks],
                    [t.price for t in ticks],
                    [now if t.ts is None else t.ts for t in ticks],
                    [NO_SEQ if t.seq is None else t.seq for t in ticks],
                    now,
                    result,
                )
        elif ticks or fx:
            symbols, sids, prices, ts, seqs = self._columns(ticks, now)
            self._apply_ticks(sids, prices, ts, seqs, now, result, symbols, list(fx))
        self._finish(now, result)
        for ref in references:
            self._reference(ref, result)
        return result

    @property
    def _steady(self) -> bool:
        """No pending action and every index established: no batch needs cutting."""
        return not (self._pending or self._maybe_unestablished)

    def _columns(self, ticks: Sequence[Tick], now: int) -> tuple[list[str], I64, F64, I64, I64]:
        """Ticks as columns.  At high rates this is most of the engine's share: list
        comprehensions into ``np.fromiter`` are its cheapest form (``np.array`` on a list
        spends twice as long discovering the dtype of each element)."""
        n = len(ticks)
        symbols = [t.symbol for t in ticks]
        prices = np.fromiter([t.price for t in ticks], np.float64, n)
        ts = _int_column([t.ts for t in ticks], now)
        seqs = _int_column([t.seq for t in ticks], NO_SEQ)
        return symbols, self.book.lookup(symbols), prices, ts, seqs

    def apply_tick_arrays(
        self, sids: I64, prices: F64, ts: I64, seqs: I64, received_ns: int | None = None
    ) -> BatchResult:
        """The kernel entry point for already-decoded arrays (sid -1 = unknown symbol)."""
        now = self.clock() if received_ns is None else received_ns
        result = BatchResult()
        n = len(sids)
        if n > self.small_batch or not self._steady:
            self._apply_ticks(sids, prices, ts, seqs, now, result)
        elif n == 1:
            self._screen_and_move_one(
                sids.item(0), prices.item(0), ts.item(0), seqs.item(0), now, result
            )
        else:
            self._screen_and_move_each(
                sids.tolist(), prices.tolist(), ts.tolist(), seqs.tolist(), now, result
            )
        self._finish(now, result)
        return result

    def advance(self, now_ns: int | None = None) -> BatchResult:
        """Apply the pending actions whose effective time has come (call it on a timer)."""
        now = self.clock() if now_ns is None else now_ns
        result = BatchResult()
        self._finish(now, result)
        return result

    def symbol_ids(self, symbols: list[str]) -> I64:
        return self.book.lookup(symbols)

    # ------------------------------------------------------------------ ticks

    def _apply_ticks(
        self,
        sids: I64,
        prices: F64,
        ts: I64,
        seqs: I64,
        now: int,
        result: BatchResult,
        symbols: list[str] | None = None,
        fx: list[FxRate] | None = None,
    ) -> None:
        """Apply ticks and FX rates, split where the batch's order matters.

        Batching must not change results, so the batch is cut at two kinds of moments, in
        timestamp order: a pending action's effective time (ticks and rates stamped before it
        go first) and, while some index has no divisor yet, each event that may complete it
        (the first price of one of its symbols, an FX rate): its divisor is fixed from exactly
        the prices of that moment.  In steady state neither exists and the batch is one call.
        """
        if self._steady:
            if fx:
                self._apply_fx(fx, now, result)
            if len(sids):
                self._screen_and_move(sids, prices, ts, seqs, now, result)
            return
        fx = fx or []
        fx_ts = np.array([now if r.ts is None else r.ts for r in fx], dtype=np.int64)
        while self._pending or self._maybe_unestablished:
            boundary, inclusive = self._next_boundary(sids, ts, fx_ts)
            if boundary is None:
                break
            cut = ts <= boundary if inclusive else ts < boundary
            fx_cut = fx_ts <= boundary if inclusive else fx_ts < boundary
            if fx_cut.any():
                self._apply_fx(
                    [r for r, early in zip(fx, fx_cut.tolist(), strict=True) if early], now, result
                )
                fx = [r for r, early in zip(fx, fx_cut.tolist(), strict=True) if not early]
                fx_ts = fx_ts[~fx_cut]
            if cut.any():
                self._screen_and_move(sids[cut], prices[cut], ts[cut], seqs[cut], now, result)
                keep = ~cut
                sids, prices, ts, seqs = sids[keep], prices[keep], ts[keep], seqs[keep]
                if symbols is not None:
                    symbols = [sym for sym, k in zip(symbols, keep.tolist(), strict=True) if k]
            if inclusive:
                self._establish_ready()
                continue
            self._apply_due(boundary, result)
            self._establish_ready()  # an add or rebalance may have completed an index
            unknown = np.flatnonzero(sids < 0)
            if symbols is not None and len(unknown):
                # An `add` just applied may have made a later tick's symbol known.
                sids[unknown] = self.book.lookup([symbols[k] for k in unknown.tolist()])
        if fx:
            self._apply_fx(fx, now, result)
        if len(sids):
            self._screen_and_move(sids, prices, ts, seqs, now, result)

    def _next_boundary(self, sids: I64, ts: I64, fx_ts: I64) -> tuple[int | None, bool]:
        """The next moment the batch must be cut at: (time, inclusive?) or (None, False).

        Inclusive: a completion event, processed with everything up to and including it.
        Exclusive: an action's effective time, processed after everything before it.
        """
        if len(ts) == 0 and len(fx_ts) == 0:
            return None, False
        latest = max(
            int(ts.max()) if len(ts) else NO_TS_VALUE,
            int(fx_ts.max()) if len(fx_ts) else NO_TS_VALUE,
        )
        action = self._pending[0][0] if self._pending else None
        if action is not None and action > latest:
            action = None
        event = self._next_completion_event(sids, ts, fx_ts) if self._unestablished else None
        if event is None and action is None:
            return None, False
        if event is not None and (action is None or event < action):
            # The last event of the batch needs no cut: the batch's end establishes anyway.
            rest = (ts > event).any() or (fx_ts > event).any()
            return (event, True) if rest else (None, False)
        return action, False

    def _next_completion_event(self, sids: I64, ts: I64, fx_ts: I64) -> int | None:
        """Earliest ts of a tick giving a first price to a symbol of an index without a
        divisor, or of an FX rate (which may complete a foreign-currency member)."""
        candidates = []
        if len(fx_ts):
            candidates.append(int(fx_ts.min()))
        if len(ts):
            m = self.members
            waiting = np.zeros(len(self.book) + 1, dtype=np.bool_)
            waiting[m.sid[np.isnan(self.divisor)[m.index]]] = True
            waiting &= np.isnan(np.append(self.book.price[: len(self.book)], 0.0))
            firsts = waiting[sids]  # sid -1 maps to the padding slot, never waiting
            if firsts.any():
                candidates.append(int(ts[firsts].min()))
        return min(candidates) if candidates else None

    def _screen_and_move(
        self, sids: I64, prices: F64, ts: I64, seqs: I64, now: int, result: BatchResult
    ) -> None:
        if len(sids) <= self.small_batch:
            self._screen_and_move_each(
                sids.tolist(), prices.tolist(), ts.tolist(), seqs.tolist(), now, result
            )
            return
        known = sids >= 0
        if not known.all():
            result.outcomes[REJECTED, UNKNOWN_SYMBOL] += int((~known).sum())
            sids, prices, ts, seqs = sids[known], prices[known], ts[known], seqs[known]
            if len(sids) == 0:
                return
        book = self.book
        touched, before, rest = screen_runs(
            book, sids, prices, ts, seqs, self.band, now, result.outcomes
        )
        if len(rest):
            sids, prices, ts, seqs = sids[rest], prices[rest], ts[rest], seqs[rest]
            rest_counts = np.bincount(sids, minlength=len(book))
            for positions in kernels.occurrence_rounds(sids, rest_counts):
                screen_round(
                    book,
                    sids[positions],
                    prices[positions],
                    ts[positions],
                    seqs[positions],
                    self.band,
                    now,
                    result.outcomes,
                )
        # Their indices' newest tick is raised when levels are next read (once per publish
        # cycle, not per batch); a symbol whose tick was not accepted changes nothing there.
        if len(self._stamped) < len(book):  # the universe grew (an add): grow the marks
            self._stamped = np.concatenate(
                [self._stamped, np.zeros(2 * len(book) - len(self._stamped), dtype=np.bool_)]
            )
        self._stamped[touched] = True
        self._any_stamped = True
        after = book.price.take(touched)
        moved = (after != before) & ~np.isnan(after)
        first = moved & np.isnan(before)
        steady = moved & ~first
        if steady.any():
            self._move(touched[steady], after[steady] - before[steady])
        if first.any():
            self._first_prices(touched[first])

    def _screen_and_move_one(
        self, sid: int, price: float, ts: int, seq: int, now: int, result: BatchResult
    ) -> None:
        """``_screen_and_move_each`` for a batch of one tick (every single-tick message)."""
        if sid < 0:
            result.outcomes[REJECTED, UNKNOWN_SYMBOL] += 1
            return
        cells = self.book.cells
        old = cells.price[sid]
        if screen_one(cells, sid, price, ts, seq, self.band, now, result.outcomes):
            self._move_alone(sid, old)

    def _move_alone(self, sid: int, old: float) -> None:
        """Move the indices of the only symbol accepted in a batch from its ``old`` price."""
        cells = self.book.cells
        row = self._row_cache.get(sid) or self._row(sid)
        self._stamp_newest(row.entries, cells.source_ts[sid])
        change = cells.price[sid] - old
        if old != old:  # the symbol's first price: its indices are recomputed
            self._first_prices(np.array([sid], dtype=np.int64))
        elif change != 0.0:
            sums = self._sum_cells
            for j, weight in row.entries:
                sums[j] += change * weight
            self._moved_rows.append(row)  # its series are this batch's changes

    def _stamp_newest(self, entries: list[tuple[int, float]], stamp: int) -> None:
        """Raise the newest tick ts of the indices in a symbol's row to ``stamp``."""
        newest = self._newest_cells
        for j, _ in entries:
            if newest[j] < stamp:
                newest[j] = stamp

    def _screen_and_move_each(
        self,
        sids: list[int],
        prices: list[float],
        ts: list[int],
        seqs: list[int],
        now: int,
        result: BatchResult,
    ) -> None:
        """The vector path's rules one tick at a time, on Python scalars: screen each tick in
        order, then move each symbol by its net change, stamped with its last accepted tick's
        ts.  Below ``small_batch`` ticks this beats numpy's per-call overhead."""
        cells = self.book.cells
        price_of = cells.price
        band, outcomes = self.band, result.outcomes
        before: dict[int, float] = {}  # accepted symbols -> their price before the batch
        for sid, price, t, seq in zip(sids, prices, ts, seqs, strict=True):
            if sid < 0:
                outcomes[REJECTED, UNKNOWN_SYMBOL] += 1
                continue
            old = price_of[sid]
            if screen_one(cells, sid, price, t, seq, band, now, outcomes) and sid not in before:
                before[sid] = old
        if not before:
            return
        if len(before) == 1:
            [(sid, old)] = before.items()
            self._move_alone(sid, old)
            return
        first: list[int] = []
        delta: dict[int, float] = {}
        source_ts = cells.source_ts
        for sid, old in before.items():
            entries = self._row(sid).entries
            self._stamp_newest(entries, source_ts[sid])
            change = price_of[sid] - old
            if old != old:
                first.append(sid)
            elif change != 0.0:
                for j, weight in entries:
                    delta[j] = delta.get(j, 0.0) + change * weight
        sums, dirty = self._sum_cells, self._dirty_few
        for j, change_of_sum in delta.items():
            if change_of_sum != 0.0:
                sums[j] += change_of_sum
                dirty.add(j)
        if first:
            self._first_prices(np.array(first, dtype=np.int64))

    def _move(self, sids: I64, price_change: F64) -> None:
        delta = kernels.move_indices(self.members, sids, price_change, self.sums)
        self._mark_dirty(delta != 0.0)

    def _first_prices(self, sids: I64) -> None:
        entries = self.members.rows(np.unique(sids))
        self._recompute_indices(np.unique(self.members.index[entries]))

    def _recompute_indices(self, indices: I64) -> None:
        if len(indices) == 0:
            return
        sums, missing = kernels.sums_of(self.members, self.book.price, indices, self.n_indices)
        self.sums[indices] = sums[indices]
        self.missing[indices] = missing[indices]
        self._mark_dirty(indices)

    # ------------------------------------------------------------------ fx and references

    def _apply_fx(self, rates: Sequence[FxRate], now: int, result: BatchResult) -> None:
        updated = False
        for r in rates:
            if not (len(r.pair) == 6 and r.pair.isalpha() and r.pair.isupper()):
                result.outcomes[REJECTED, UNKNOWN_SYMBOL] += 1
            elif not (math.isfinite(r.rate) and r.rate > 0.0):
                result.outcomes[REJECTED, BAD_PRICE] += 1
            elif not self.fx.update(r.pair, r.rate, now if r.ts is None else r.ts):
                result.outcomes[REJECTED, OUT_OF_ORDER] += 1
            else:
                result.outcomes["accepted", "ok"] += 1
                updated = True
        if not updated:
            return
        previous = self.fx.refresh()
        changed_slots = np.flatnonzero(
            (previous != self.fx.factor) & ~(np.isnan(previous) & np.isnan(self.fx.factor))
        )
        if len(changed_slots) == 0:
            return
        self._refresh_fx()
        affected = np.isin(self.members.fx_slot, changed_slots)
        self._recompute_indices(np.unique(self.members.index[affected]))

    def _reference(self, ref: ReferenceLevel, result: BatchResult) -> None:
        if ref.index not in self._series_by_id or not (math.isfinite(ref.level) and ref.level > 0):
            return
        self.references[ref.index] = (ref.level, ref.ts or 0)
        level = self.level_of(ref.index)
        if level is not None:
            result.deviations[ref.index] = (level / ref.level - 1.0) * 1e4

    def deviation_bps(self, series: str) -> float | None:
        """Computed level vs the last reference level for ``series``, in basis points."""
        ref = self.references.get(series)
        level = self.level_of(series)
        if ref is None or level is None:
            return None
        return (level / ref[0] - 1.0) * 1e4

    # ------------------------------------------------------------------ establishing levels

    def _finish(self, now: int, result: BatchResult) -> None:
        """Apply the actions now due, fix new divisors, and list the series that changed."""
        if self._pending:
            self._apply_due(now, result)
        if self._maybe_unestablished:
            self._establish_ready()
        dirty_few, moved_rows = self._dirty_few, self._moved_rows
        if not (self._any_dirty or dirty_few) and len(moved_rows) <= 1:
            # At most one symbol moved, by the per-tick path: its row lists the series.
            if moved_rows:
                result.changed += moved_rows[0].series
                moved_rows.clear()
            return
        for row in moved_rows:
            dirty_few.update(row.moves)
        moved_rows.clear()
        if not self._any_dirty:
            # Only the per-tick path marked: a few indices, cheaper in plain Python.
            series_of = self._publishable_series
            for j in sorted(dirty_few):
                result.changed += series_of[j]
            dirty_few.clear()
            return
        if dirty_few:
            self.dirty[list(dirty_few)] = True
            dirty_few.clear()
        changed = self.dirty & ~np.isnan(self.divisor)
        result.changed.extend(self._series_names[changed[self._series_index]].tolist())
        self.dirty[:] = False
        self._any_dirty = False

    def _establish_ready(self) -> None:
        if self._unestablished:
            self._establish(
                np.flatnonzero(
                    np.isnan(self.divisor) & (self.missing == 0) & (self.members.count > 0)
                )
            )

    @property
    def _unestablished(self) -> int:
        return int(np.isnan(self.divisor).sum()) if self._maybe_unestablished else 0

    def _establish(self, candidates: I64) -> None:
        """Fix the divisor of indices that just got their first complete set of prices."""
        candidates = candidates[
            np.isnan(self.divisor[candidates])
            & (self.missing[candidates] == 0)
            & (self.members.count[candidates] > 0)
        ]
        if len(candidates) == 0:
            return
        equal = [j for j in candidates.tolist() if self.methods[j] == "equal"]
        if equal:
            self._set_equal_weights(np.array(equal, dtype=np.int64), EQUAL_WEIGHT_NOTIONAL)
        sums = self.sums[candidates]
        given = self.configured_divisor[candidates]
        self.divisor[candidates] = np.where(
            np.isnan(given), sums / self.base_value[candidates], given
        )
        self.returns.start(candidates, self.sums[candidates] / self.divisor[candidates])
        for j in candidates.tolist():
            self._publishable_series[j] = self._series_of_index[j]
        self._row_cache.clear()  # rows list the series of established indices
        self._mark_dirty(candidates)
        self._maybe_unestablished = bool(np.isnan(self.divisor).any())

    def _set_equal_weights(self, indices: I64, notional: float | F64) -> None:
        """q = notional / (price * fx): every member of each index then holds the same value."""
        targets = np.broadcast_to(np.asarray(notional, dtype=np.float64), indices.shape)
        m = self.members
        for j, value in zip(indices.tolist(), targets.tolist(), strict=True):
            rows = m.of_index(j)
            unit = self.book.price[m.sid[rows]] * self.fx.factor[m.fx_slot[rows]]
            m.q[rows] = value / unit
        self._refresh_fx()
        self._recompute_indices(indices)

    # ------------------------------------------------------------------ corporate actions

    def _submit(self, action: Action, now: int, result: BatchResult) -> None:
        if action.id in self._seen_actions:
            result.rejected_actions.append((action.id, "duplicate"))
            return
        self._seen_actions.add(action.id)
        effective = now if action.effective is None else action.effective
        heapq.heappush(self._pending, (effective, next(self._order), action))

    def _apply_due(self, now: int, result: BatchResult) -> None:
        while self._pending and self._pending[0][0] <= now:
            # An index completed by this batch's earlier ticks has its divisor before the
            # action adjusts it.
            self._establish_ready()
            effective, _, action = heapq.heappop(self._pending)
            outcome = apply_action(self, action, effective)
            if isinstance(outcome, str):
                result.rejected_actions.append((action.id, outcome))
            else:
                self.applied_actions += 1
                result.audit.extend(outcome)

    @property
    def pending_actions(self) -> int:
        return len(self._pending)

    def adjust(
        self,
        indices: Iterable[int],
        change: Callable[[], None],
        action: str,
        action_id: str,
        symbol: str,
        effective: int,
    ) -> list[AuditRecord]:
        """The one divisor adjustment every index-changing event goes through.

        Sums before and after ``change`` are taken at the same prices, so
        ``divisor_new = divisor_old * S_after / S_before`` keeps each level where it was.
        """
        js = np.unique(np.fromiter(indices, dtype=np.int64))
        self._newest_per_index()  # fold pending stamps while the membership is the old one
        before, missing_before = kernels.sums_of(self.members, self.book.price, js, self.n_indices)
        divisor_before = self.divisor[js].copy()
        change()
        # New members bring their newest tick with them.
        kernels.raise_newest(
            self.members,
            self.newest_ts,
            self.members.sid[np.isin(self.members.index, js)],
            self.book.source_ts,
        )
        after, missing_after = kernels.sums_of(self.members, self.book.price, js, self.n_indices)
        records = []
        for k, j in enumerate(js.tolist()):
            old_divisor = float(divisor_before[k])
            new_divisor = old_divisor
            complete = missing_before[j] == 0 and missing_after[j] == 0
            if not math.isnan(old_divisor) and complete and before[j] > 0:
                ratio = float(after[j] / before[j])
                if abs(ratio - 1.0) > DIVISOR_EPSILON:
                    new_divisor = old_divisor * ratio
            self.divisor[j] = new_divisor
            records.append(
                AuditRecord(
                    action_id=action_id,
                    action=action,
                    index=self.index_ids[j],
                    symbol=symbol,
                    effective=effective,
                    divisor_before=old_divisor,
                    divisor_after=new_divisor,
                    level_before=float(before[j] / old_divisor)
                    if missing_before[j] == 0
                    else math.nan,
                    level_after=float(after[j] / new_divisor)
                    if missing_after[j] == 0
                    else math.nan,
                )
            )
        self.sums[js] = after[js]
        self.missing[js] = missing_after[js]
        self._mark_dirty(js)
        self._row_cache.clear()
        return records

    # ------------------------------------------------------------------ reading levels

    def pr_levels(self) -> F64:
        """Price-return level of every index (NaN where not established)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            levels: F64 = self.sums / self.divisor
        return levels

    def series_levels(self) -> dict[str, float]:
        """Every established series' level, by series id."""
        pr = self.pr_levels()
        by_variant = {"price": pr, "total": self.returns.total(pr), "net": self.returns.net(pr)}
        return {
            s: float(by_variant[v][j]) for s, j, v in self.series if not math.isnan(self.divisor[j])
        }

    def level_of(self, series: str) -> float | None:
        slot = self._series_by_id.get(series)
        if slot is None:
            return None
        j, variant = slot
        if math.isnan(self.divisor[j]):
            return None
        pr = self.sums[j] / self.divisor[j]
        if variant == "price":
            return float(pr)
        base = self.returns.tr_close if variant == "total" else self.returns.ntr_close
        points = self.returns.gross_points if variant == "total" else self.returns.net_points
        return float(base[j] * (pr + points[j]) / self.returns.pr_close[j])

    def levels(self, series: Iterable[str] | None = None) -> list[SeriesLevel]:
        """Published fields of every established series (or of those named), in series order.

        Publishing metadata is settled here, once per publish cycle rather than per batch:
        the vector path's pending newest-tick stamps are folded in, and stale counts are
        recounted only if some constituent became stale or fresh since the last read."""
        picks: Iterable[int]
        if series is None:
            picks = range(len(self.series))
        else:
            position = self._series_position
            picks = sorted({position[s] for s in series if s in position})
        chosen = [self.series[k] for k in picks if self._publishable_series[self.series[k][1]]]
        if not chosen:
            return []
        js = np.array(sorted({j for _, j, _ in chosen}), dtype=np.int64)
        stale = self._stale_per_index().take(js)
        newest = self._newest_per_index().take(js)
        divisor = self.divisor.take(js)
        pr = self.sums.take(js) / divisor
        returns = self.returns
        level_by_variant = {
            "price": pr.tolist(),
            "total": returns.total(pr, js).tolist(),
            "net": returns.net(pr, js).tolist(),
        }
        close_by_variant = {
            "price": returns.pr_close.take(js).tolist(),
            "total": returns.tr_close.take(js).tolist(),
            "net": returns.ntr_close.take(js).tolist(),
        }
        slot = {j: k for k, j in enumerate(js.tolist())}
        divisors, counts = divisor.tolist(), self.members.count.take(js).tolist()
        stale_list, newest_list = stale.tolist(), newest.tolist()
        out = []
        for s, j, variant in chosen:
            k = slot[j]
            level = level_by_variant[variant][k]
            prev_close = close_by_variant[variant][k]
            count, stale_count = counts[k], stale_list[k]
            out.append(
                SeriesLevel(
                    series=s,
                    level=level,
                    divisor=divisors[k],
                    source_ts=newest_list[k],
                    prev_close=prev_close,
                    change=level - prev_close,
                    change_pct=(level / prev_close - 1.0) * 100.0 if prev_close else math.nan,
                    stale=stale_count,
                    coverage=(count - stale_count) / count if count else 0.0,
                    constituents=count,
                )
            )
        return out

    def _stale_per_index(self) -> I64:
        """Stale constituents of every index (no tick for stale_after_s, or no price yet).

        The per-symbol mask is cheap; the count per index reads every membership, so it is
        redone only when the mask or the membership has changed since the last read."""
        n_symbols = len(self.book)
        stale_symbol = (self.book.fresh_ns[:n_symbols] < self.clock() - self.stale_after_ns) | (
            np.isnan(self.book.price[:n_symbols])
        )
        key = (stale_symbol.tobytes(), self.members.version)
        if self._stale_counts is None or self._stale_counts[0] != key:
            counts = kernels.stale_counts(self.members, stale_symbol, self.n_indices)
            self._stale_counts = (key, counts)
        return self._stale_counts[1]

    def _newest_per_index(self) -> I64:
        if self._any_stamped:
            stamped = np.flatnonzero(self._stamped[: len(self.book)])
            self._stamped[stamped] = False
            self._any_stamped = False
            kernels.raise_newest(self.members, self.newest_ts, stamped, self.book.source_ts)
        return self.newest_ts

    def constituents(self, index_id: str) -> dict[str, float]:
        """Symbol -> index shares q of one index (for audits and tests)."""
        m = self.members
        rows = m.of_index(self.slot[index_id])
        return {self.book.names[s]: float(q) for s, q in zip(m.sid[rows], m.q[rows], strict=True)}

    def price_of(self, symbol: str) -> float | None:
        sid = self.book.ids.get(symbol)
        if sid is None or math.isnan(self.book.price[sid]):
            return None
        return float(self.book.price[sid])

    # ------------------------------------------------------------------ maintenance

    def recompute(self) -> float:
        """Replace every incremental sum by a from-scratch one; returns the largest relative
        drift found (and keeps the largest ever seen in ``max_drift``)."""
        exact, missing = kernels.full_sums(self.members, self.book.price, self.n_indices)
        scale = np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
        drift = float(np.max(np.abs(self.sums - exact) / scale)) if self.n_indices else 0.0
        # Publishers republish what moved, so the exact sums reach Redis too.
        self._mark_dirty(self.sums != exact)
        self.sums[:] = exact  # in place: the per-tick path holds a view of it
        self.missing = missing
        self.max_drift = max(self.max_drift, drift)
        return drift

    def close(self) -> None:
        """Roll the trading day: current levels become the previous close and TR/NTR bases."""
        self.returns.roll(self.pr_levels())
