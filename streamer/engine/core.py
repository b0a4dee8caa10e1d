"""The calculation engine: pure and synchronous (sans-I/O).

``Engine.apply`` takes one micro-batch of decoded messages and the market time ``now`` and
returns what changed; it never waits, never touches a socket and never reads a clock, so the
async shell only does read -> decode -> apply -> publish, and every rule here is tested
without a broker and with time moved by hand.

State per index j: ``sums[j] = sum_i(price_i * fx_i * q_ij)`` over priced constituents,
``missing[j]`` unpriced constituents, ``divisor[j]`` (NaN until the index is established, i.e.
until its first complete set of prices).  Ticks move sums incrementally; FX moves, first prices
and corporate actions recompute the indices they touch from scratch.

What is checkpointed (see ``engine.snapshot``) is the universe's columns, divisors, returns,
pending and applied actions, references and the calendars' last closes; everything else here
(sums, counts, row caches, marks) is derived from them and rebuilt on restore.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from streamer.config import (
    KNOWN_CURRENCIES,
    IndexDefinition,
    QualitySettings,
    check_definitions,
)
from streamer.engine import kernels
from streamer.engine.actions import apply_action
from streamer.engine.adjust import audit_records, continuous_divisors
from streamer.engine.arrays import F64, I64, MAX_TS, NO_SEQ, NO_TS, Mask, float_cells, int_cells
from streamer.engine.funds import FundBook, FundLevel, FundTable
from streamer.engine.quality import Screen, screen_one, screen_round, screen_runs
from streamer.engine.results import (
    BAD_PRICE,
    FUTURE_TS,
    OUT_OF_ORDER,
    REJECTED,
    UNKNOWN_PAIR,
    UNKNOWN_SYMBOL,
    AuditRecord,
    BatchResult,
    CloseRecord,
    LevelColumns,
    SeriesLevel,
    SeriesTable,
)
from streamer.engine.returns import ReturnsBook
from streamer.engine.schedule import (
    Agenda,
    Cursor,
    Event,
    ScheduledClose,
    SessionRules,
)
from streamer.engine.state import EngineState
from streamer.engine.universe import SymbolBook, Universe
from streamer.engine.weighting import WEIGHTINGS, Weighting
from streamer.fund_config import Basket, FundDefinition
from streamer.wire import (
    Action,
    BasketChange,
    Dividend,
    FxRate,
    ReferenceLevel,
    Rights,
    SpecialDividend,
    Spinoff,
    Split,
    Tick,
)

# Batches up to this size take the per-tick path: below it numpy's per-call overhead loses
# (measured crossover on 500 symbols / 15 indices: about 28 ticks).
SMALL_BATCH = 24
# Equal-weighted indices hold this much index currency of every member at each rebalance.
EQUAL_WEIGHT_NOTIONAL = 1e6
# Bounds on what input can make the engine remember (each refused one is counted).
DEFAULT_MAX_PENDING = 10_000
DEFAULT_ID_RETENTION_NS = 30 * 86_400 * 1_000_000_000
NO_TRIGGER = MAX_TS
MAX_APPLIED_IDS = 1_000_000


VARIANT_ROWS = {"price": 0, "total": 1, "net": 2}


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
        *,
        sessions: SessionRules | None = None,
        start_ns: int = 0,
        max_pending: int = DEFAULT_MAX_PENDING,
        id_retention_ns: int = DEFAULT_ID_RETENTION_NS,
        state: EngineState | None = None,
        funds: Sequence[FundDefinition] = (),
    ) -> None:
        """``start_ns``: the market time the engine starts at (seed prices count as fresh
        from then).  ``sessions``: calendars to follow; None computes around the clock with
        no session and no scheduled close.  ``state``: a restored state (see
        ``engine.snapshot``) instead of a fresh one from the definitions.  ``funds``: index
        funds valued from the same prices (see ``engine.funds``)."""
        quality = quality or QualitySettings()
        self.small_batch = SMALL_BATCH
        self.band = quality.max_move_pct / 100.0
        self.stale_after_ns = int(quality.stale_after_s * 1e9)
        self.max_future_ns = int(quality.max_future_s * 1e9)
        self.reset_gap_ns = int(quality.seq_reset_after_s * 1e9)
        self.max_pending = max_pending
        self.id_retention_ns = id_retention_ns
        self.sessions = sessions
        self.definitions = list(definitions)
        self.index_ids = [d.id for d in self.definitions]
        self.slot = {d.id: j for j, d in enumerate(self.definitions)}
        self.weightings: list[Weighting] = [WEIGHTINGS[d.method] for d in self.definitions]
        self.currencies = [d.currency for d in self.definitions]
        self.calendar_of = [
            (d.calendar or sessions.default_calendar) if sessions else "" for d in self.definitions
        ]
        self.calendars = list(dict.fromkeys(self.calendar_of)) if sessions else []
        self._calendar_code = np.array(
            [self.calendars.index(c) if sessions else 0 for c in self.calendar_of], dtype=np.int64
        )
        n = len(self.definitions)
        self.n_indices = n
        self.configured_divisor: F64 = np.array(
            [d.divisor if d.divisor is not None else np.nan for d in self.definitions]
        )
        self.base_value: F64 = np.array(
            [d.base_value if d.base_value is not None else np.nan for d in self.definitions]
        )
        # ---- checkpointed state: one object, nothing derived in it
        self.state = state or EngineState(
            universe=Universe(self.currencies, self.weightings),
            divisor=np.full(n, np.nan),
            returns=ReturnsBook(n),
            agenda=Agenda(),
        )
        # The state's parts under the names the engine uses: the same objects (the state
        # object and these parts are never replaced while the engine lives), as plain
        # attributes because the per-tick path reads them (a property costs a call).
        self.universe: Universe = self.state.universe
        self.divisor: F64 = self.state.divisor
        self.returns: ReturnsBook = self.state.returns
        self.agenda: Agenda = self.state.agenda
        self.references = self.state.references
        self.cursors = self.state.cursors
        # ---- derived
        self.sums: F64 = np.zeros(n)
        self.missing: I64 = np.zeros(n, dtype=np.int64)
        # Per index, the ts of the newest accepted tick of its constituents (0: none yet).
        # The per-tick path raises it as it goes; the vector path marks the symbols it saw in
        # ``_stamped``, folded in when levels are read.  Invariant: outside the marked
        # symbols, every member's source_ts is folded into its indices' newest_ts.
        self.newest_ts: I64 = np.zeros(n, dtype=np.int64)
        self._stamped: Mask = np.zeros(0, dtype=np.bool_)
        self._any_stamped = False
        self._newest_cells = int_cells(self.newest_ts)
        self._sum_cells = float_cells(self.sums)
        # Stale constituents per index, for the stale-symbol mask it was counted from.
        self._stale_counts: tuple[tuple[bytes, int], I64] | None = None
        self._last_stale: I64 = np.full(n, -1, dtype=np.int64)  # as last reported
        self.dirty: Mask = np.zeros(n, dtype=np.bool_)
        self.max_drift = 0.0
        self.applied_actions = 0
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
        self._publishable_index: Mask = np.zeros(n, dtype=np.bool_)  # the same, per index
        self._series_index = np.array([j for _, j, _ in self.series], dtype=np.int64)
        # 0 price, 1 total, 2 net: rows of the level stacks in series_table.
        self._series_variant = np.array(
            [VARIANT_ROWS[v] for _, _, v in self.series], dtype=np.int64
        )
        # Per-symbol rows as Python lists, for the per-tick path; valid for one universe
        # version and one set of established indices.
        self._row_cache: dict[int, Row] = {}
        self._row_version = -1
        self._any_dirty = False
        # The per-tick path marks changes here, cheaper than in ``dirty``: indices, or the rows
        # of symbols that moved alone.
        self._dirty_few: set[int] = set()
        self._moved_rows: list[Row] = []
        self._series_by_id = {s: (j, v) for s, j, v in self.series}
        self._series_position = {s: k for k, (s, _, _) in enumerate(self.series)}
        self._maybe_unestablished = True
        self._next_trigger = NO_TRIGGER
        self._gate_layout = -1  # the universe layout the session gate was computed for
        self._result: BatchResult | None = None  # the batch being applied (closes report here)
        self.now = start_ns  # the latest market time the engine was given
        check_definitions(definitions)  # a no-op for the tuple load_settings checked
        # Index funds: baskets over the same symbols; None when none is configured, so the
        # hot paths pay one attribute test.
        self.funds: FundBook | None = None
        if funds:
            fund_state = self.state.funds
            if fund_state is not None and [d.id for d in funds] != fund_state.ids:
                fund_state = None  # restored for other funds (snapshot.restore reconciles)
            self.funds = FundBook(funds, self.universe, fund_state)
            self.state.funds = self.funds.state
        if state is None:
            self._load_constituents(start_ns)
        else:
            if self.funds is not None:
                self.universe.add_symbols(self.funds.symbols(), start_ns)
                self.funds.build()
            self._after_load()
            self._schedule_restored_closes()
            self._establish(np.arange(self.n_indices))  # indices the config added

    @property
    def applied(self) -> dict[str, int]:
        return self.state.applied

    @property
    def revision(self) -> int:
        return self.state.revision

    def _revise(self) -> None:
        self.state.revision += 1

    # ------------------------------------------------------------------ construction

    def _load_constituents(self, start_ns: int) -> None:
        book = self.universe.book
        # Symbols in order of first appearance (check_definitions made their currency one),
        # and the last seed price given for each: as the loop over every membership did.
        currency_of = {
            c.symbol: c.currency or d.currency for d in reversed(self.definitions)
            for c in reversed(d.constituents)
        }  # fmt: skip
        first_seen = dict.fromkeys(c.symbol for d in self.definitions for c in d.constituents)
        for symbol in first_seen:
            self.universe.add_symbol(symbol, currency_of[symbol], start_ns)
        seeds = {
            c.symbol: c.price for d in self.definitions for c in d.constituents
            if c.price is not None
        }  # fmt: skip
        if seeds:
            book.price[book.lookup(list(seeds))] = np.fromiter(seeds.values(), np.float64)
        if self.funds is not None:
            for symbol, currency in self.funds.symbols():
                self.universe.add_symbol(symbol, currency, start_ns)
        self.universe.populate([d.constituents for d in self.definitions], start_ns)
        if self.funds is not None:
            self.funds.build()
        self._after_load()
        self._establish(np.arange(self.n_indices))

    def _schedule_restored_closes(self) -> None:
        """Restored cursors know the last close taken; their next closes are scheduled."""
        for cursor in self.cursors.values():
            self._schedule_close(cursor)

    def _after_load(self) -> None:
        """Derive everything that follows from the checkpointed state."""
        sums, self.missing = kernels.full_sums(
            self.universe.members, self.universe.book.price, self.n_indices
        )
        self.sums[:] = sums
        self.newest_ts[:] = 0
        members = self.universe.members
        kernels.raise_newest(
            members, self.newest_ts, np.unique(members.sid), self.universe.book.source_ts
        )
        established = ~np.isnan(self.divisor)
        for j in range(self.n_indices):
            self._publishable_series[j] = self._series_of_index[j] if established[j] else []
        self._publishable_index = established.copy()
        self._maybe_unestablished = not bool(established.all())
        self._row_cache.clear()
        self._stale_counts = None
        self._gate_layout = -1
        self._refresh_trigger()

    def _row(self, sid: int) -> Row:
        row = self._row_cache.get(sid)
        if row is None:
            m = self.universe.members
            start, stop = int(m.row_ptr[sid]), int(m.row_ptr[sid + 1])
            indices, weights = m.index[start:stop].tolist(), m.qfx0[start:stop].tolist()
            entries = list(zip(indices, weights, strict=True))
            moves = [j for j, weight in entries if weight != 0.0]
            series = [s for j in moves for s in self._publishable_series[j]]
            row = self._row_cache[sid] = Row(entries, moves, series)
        return row

    def _mark_dirty(self, indices: I64 | Mask | slice | list[int]) -> None:
        self.dirty[indices] = True
        self._any_dirty = True

    # ------------------------------------------------------------------ the batch entry point

    def apply(
        self,
        ticks: Sequence[Tick] = (),
        fx: Sequence[FxRate] = (),
        actions: Sequence[Action] = (),
        references: Sequence[ReferenceLevel] = (),
        *,
        now: int,
        received_ns: int | None = None,
    ) -> BatchResult:
        """Apply one micro-batch at market time ``now``; returns outcome counts, changed
        series, audit records and closes.  ``received_ns`` (default ``now``) is when the
        batch was received: ticks stamped more than ``max_future_s`` after it are refused.
        A tick without ts is stamped ``now``."""
        screen = self._begin(now, now if received_ns is None else received_ns)
        result = screen.result
        for action in actions:
            self._submit(action, now, result)
        if self.funds is not None and ticks:
            self._take_quotes(ticks, now, now if received_ns is None else received_ns)
        quiet = not self._maybe_unestablished and (
            self._next_trigger == NO_TRIGGER or self._quiet_until(now, ticks, fx)
        )
        if len(ticks) <= self.small_batch and quiet:
            # A few ticks: straight from the messages to Python scalars, no arrays on the way.
            if fx:
                self._apply_fx(fx, screen)
            if len(ticks) == 1:
                t = ticks[0]
                self._screen_and_move_one(
                    self.universe.book.ids[t.symbol],
                    t.price,
                    now if t.ts is None else t.ts,
                    NO_SEQ if t.seq is None else t.seq,
                    screen,
                )
            elif ticks:
                ids = self.universe.book.ids
                self._screen_and_move_each(
                    [ids[t.symbol] for t in ticks],
                    [t.price for t in ticks],
                    [now if t.ts is None else t.ts for t in ticks],
                    [NO_SEQ if t.seq is None else t.seq for t in ticks],
                    screen,
                )
        elif ticks or fx:
            symbols, sids, prices, ts, seqs = self._columns(ticks, now)
            self._apply_ticks(sids, prices, ts, seqs, screen, symbols, list(fx))
        self._finish(now, screen)
        for ref in references:
            self._reference(ref, result)
        return result

    def apply_tick_arrays(
        self, sids: I64, prices: F64, ts: I64, seqs: I64, *, now: int
    ) -> BatchResult:
        """The kernel entry point for already-decoded arrays (sid -1 = unknown symbol)."""
        screen = self._begin(now, now)
        n = len(sids)
        quiet = not self._maybe_unestablished and (
            self._next_trigger == NO_TRIGGER or self._quiet_until(now, ts)
        )
        if n > self.small_batch or not quiet:
            self._apply_ticks(sids, prices, ts, seqs, screen)
        elif n == 1:
            self._screen_and_move_one(
                sids.item(0), prices.item(0), ts.item(0), seqs.item(0), screen
            )
        elif n:
            self._screen_and_move_each(
                sids.tolist(), prices.tolist(), ts.tolist(), seqs.tolist(), screen
            )
        self._finish(now, screen)
        return screen.result

    def advance(self, now: int) -> BatchResult:
        """Fire what is due at market time ``now`` (actions, closes) and report series whose
        stale count changed (call it on a timer, so that a dead feed shows)."""
        screen = self._begin(now, now)
        self._finish(now, screen)
        self._report_staleness(now, screen.result)
        return screen.result

    def _begin(self, now: int, received: int) -> Screen:
        """Per batch: the market time moves on, caches follow the universe, sessions are
        started; returns the batch's screening parameters (which carry its result)."""
        if now > self.now:
            self.now = now
        if self._row_version != self.universe.version:
            self._row_cache.clear()
            self._row_version = self.universe.version
        if self.sessions is not None:
            self._follow_sessions(now)
        future_limit = received + self.max_future_ns
        if future_limit > MAX_TS:  # int64 arrays compare against it
            future_limit = MAX_TS
        result = BatchResult()
        return Screen(self.band, now, future_limit, self.reset_gap_ns, result, result.outcomes)

    def _quiet_until(
        self, now: int, ticks: Sequence[Tick] | I64, fx: Sequence[FxRate] = ()
    ) -> bool:
        """No batch cutting needed: every index established, and no event fires before the
        batch's clock and messages are done."""
        if self._maybe_unestablished:
            return False
        trigger = self._next_trigger
        if trigger == NO_TRIGGER:
            return True
        if now >= trigger:
            return False
        if isinstance(ticks, np.ndarray):
            if len(ticks) and int(ticks.max()) >= trigger:
                return False
        else:
            for t in ticks:
                if t.ts is not None and t.ts >= trigger:
                    return False
        # A far-future stamp makes a batch unquiet too: the cutting path refuses it first.
        return all(r.ts is None or r.ts < trigger for r in fx)

    @property
    def _steady(self) -> bool:
        """No pending event and every index established: no batch needs cutting."""
        return self._next_trigger == NO_TRIGGER and not self._maybe_unestablished

    def _columns(self, ticks: Sequence[Tick], now: int) -> tuple[list[str], I64, F64, I64, I64]:
        """Ticks as columns.  At high rates this is most of the engine's share: list
        comprehensions into ``np.fromiter`` are its cheapest form (``np.array`` on a list
        spends twice as long discovering the dtype of each element)."""
        n = len(ticks)
        symbols = [t.symbol for t in ticks]
        prices = np.fromiter([t.price for t in ticks], np.float64, n)
        ts = _int_column([t.ts for t in ticks], now)
        seqs = _int_column([t.seq for t in ticks], NO_SEQ)
        return symbols, self.universe.book.lookup(symbols), prices, ts, seqs

    def symbol_ids(self, symbols: list[str]) -> I64:
        return self.universe.book.lookup(symbols)

    @property
    def book(self) -> SymbolBook:
        """The symbol book (read-only use: tools and benchmarks)."""
        return self.universe.book

    # ------------------------------------------------------------------ ticks

    def _apply_ticks(
        self,
        sids: I64,
        prices: F64,
        ts: I64,
        seqs: I64,
        screen: Screen,
        symbols: list[str] | None = None,
        fx: list[FxRate] | None = None,
    ) -> None:
        """Apply ticks and FX rates, split where the batch's order matters.

        Batching must not change results, so the batch is cut at two kinds of moments, in
        timestamp order: a pending event's cut (ticks and rates stamped before it go first;
        an event fires when a tick stamped at or after its trigger is in the batch) and,
        while some index has no divisor yet, each event that may complete it (the first
        price of one of its symbols, an FX rate): its divisor is fixed from exactly the
        prices of that moment.  In steady state neither exists and the batch is one call.
        """
        if self._steady:
            if fx:
                self._apply_fx(fx, screen)
            if len(sids):
                self._screen_and_move(sids, prices, ts, seqs, screen)
            return
        # A tick or rate stamped beyond the tolerance is refused below; it must not reach
        # the cutting either, where its stamp would fire every close until the year it names.
        future = ts > screen.future_limit
        if future.any():
            screen.outcomes[REJECTED, FUTURE_TS] += int(future.sum())
            keep = ~future
            sids, prices, ts, seqs = sids[keep], prices[keep], ts[keep], seqs[keep]
            if symbols is not None:
                symbols = [sym for sym, k in zip(symbols, keep.tolist(), strict=True) if k]
        fx = [r for r in fx or [] if not self._future_rate(r, screen)]
        fx_ts = np.array([screen.now_ns if r.ts is None else r.ts for r in fx], dtype=np.int64)
        while len(self.agenda) or self._maybe_unestablished:
            boundary, inclusive = self._next_boundary(sids, ts, fx_ts)
            if boundary is None:
                break
            cut = ts <= boundary if inclusive else ts < boundary
            fx_cut = fx_ts <= boundary if inclusive else fx_ts < boundary
            if fx_cut.any():
                self._apply_fx(
                    [r for r, early in zip(fx, fx_cut.tolist(), strict=True) if early], screen
                )
                fx = [r for r, early in zip(fx, fx_cut.tolist(), strict=True) if not early]
                fx_ts = fx_ts[~fx_cut]
            if cut.any():
                self._screen_and_move(sids[cut], prices[cut], ts[cut], seqs[cut], screen)
                keep = ~cut
                sids, prices, ts, seqs = sids[keep], prices[keep], ts[keep], seqs[keep]
                if symbols is not None:
                    symbols = [sym for sym, k in zip(symbols, keep.tolist(), strict=True) if k]
            if inclusive:
                self._establish_ready()
                continue
            self._fire_next(screen)
            self._establish_ready()  # an add or rebalance may have completed an index
            unknown = np.flatnonzero(sids < 0)
            if symbols is not None and len(unknown):
                # An `add` just applied may have made a later tick's symbol known.
                sids[unknown] = self.universe.book.lookup([symbols[k] for k in unknown.tolist()])
        if fx:
            self._apply_fx(fx, screen)
        if len(sids):
            self._screen_and_move(sids, prices, ts, seqs, screen)

    @staticmethod
    def _future_rate(rate: FxRate, screen: Screen) -> bool:
        if rate.ts is None or rate.ts <= screen.future_limit:
            return False
        screen.outcomes[REJECTED, FUTURE_TS] += 1
        return True

    def _next_boundary(self, sids: I64, ts: I64, fx_ts: I64) -> tuple[int | None, bool]:
        """The next moment the batch must be cut at: (time, inclusive?) or (None, False).

        Inclusive: a completion event, processed with everything up to and including it.
        Exclusive: an event's cut, processed after everything stamped before it.
        """
        if len(ts) == 0 and len(fx_ts) == 0:
            return None, False
        latest = max(
            int(ts.max()) if len(ts) else NO_TS,
            int(fx_ts.max()) if len(fx_ts) else NO_TS,
        )
        trigger = self.agenda.next_trigger
        action = self.agenda.next_cut if trigger is not None and trigger <= latest else None
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
            book = self.universe.book
            m = self.universe.members
            waiting = np.zeros(len(book) + 1, dtype=np.bool_)
            waiting[m.sid[np.isnan(self.divisor)[m.index]]] = True
            waiting &= np.isnan(np.append(book.price[: len(book)], 0.0))
            firsts = waiting[sids]  # sid -1 maps to the padding slot, never waiting
            if firsts.any():
                candidates.append(int(ts[firsts].min()))
        return min(candidates) if candidates else None

    def _screen_and_move(self, sids: I64, prices: F64, ts: I64, seqs: I64, screen: Screen) -> None:
        if len(sids) <= self.small_batch:
            self._screen_and_move_each(
                sids.tolist(), prices.tolist(), ts.tolist(), seqs.tolist(), screen
            )
            return
        known = sids >= 0
        if not known.all():
            screen.outcomes[REJECTED, UNKNOWN_SYMBOL] += int((~known).sum())
            sids, prices, ts, seqs = sids[known], prices[known], ts[known], seqs[known]
            if len(sids) == 0:
                return
        book = self.universe.book
        touched, before, rest = screen_runs(book, sids, prices, ts, seqs, screen)
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
                    screen,
                )
        # Their indices' newest tick is raised when levels are next read (once per publish
        # cycle, not per batch); a symbol whose tick was not accepted changes nothing there.
        if len(self._stamped) < len(book):  # the universe grew (an add): grow the marks
            self._stamped = np.concatenate(
                [self._stamped, np.zeros(2 * len(book) - len(self._stamped), dtype=np.bool_)]
            )
        self._stamped[touched] = True
        self._any_stamped = True
        if self.funds is not None:
            self.funds.touch(touched)
        after = book.price.take(touched)
        moved = (after != before) & ~np.isnan(after)
        first = moved & np.isnan(before)
        steady = moved & ~first
        if steady.any():
            self._move(touched[steady], after[steady] - before[steady])
        if first.any():
            self._first_prices(touched[first])

    def _screen_and_move_one(
        self, sid: int, price: float, ts: int, seq: int, screen: Screen
    ) -> None:
        """``_screen_and_move_each`` for a batch of one tick (every single-tick message)."""
        if sid < 0:
            screen.outcomes[REJECTED, UNKNOWN_SYMBOL] += 1
            return
        book = self.universe.book
        cells = book.cells
        old = cells.price[sid]
        if screen_one(cells, book.gated, sid, price, ts, seq, screen):
            self._move_alone(sid, old)

    def _move_alone(self, sid: int, old: float) -> None:
        """Move the indices of the only symbol accepted in a batch from its ``old`` price."""
        cells = self.universe.book.cells
        if self.funds is not None:
            self.funds.touch_one(sid)
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
        screen: Screen,
    ) -> None:
        """The vector path's rules one tick at a time, on Python scalars: screen each tick in
        order, then move each symbol by its net change, stamped with its last accepted tick's
        ts.  Below ``small_batch`` ticks this beats numpy's per-call overhead."""
        book = self.universe.book
        cells, gated = book.cells, book.gated
        price_of = cells.price
        outcomes = screen.outcomes
        before: dict[int, float] = {}  # accepted symbols -> their price before the batch
        for sid, price, t, seq in zip(sids, prices, ts, seqs, strict=True):
            if sid < 0:
                outcomes[REJECTED, UNKNOWN_SYMBOL] += 1
                continue
            old = price_of[sid]
            if screen_one(cells, gated, sid, price, t, seq, screen) and sid not in before:
                before[sid] = old
        if not before:
            return
        if self.funds is not None and len(before) > 1:
            self.funds.touch(np.fromiter(before, np.int64, len(before)))
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
        delta = kernels.move_indices(self.universe.members, sids, price_change, self.sums)
        self._mark_dirty(delta != 0.0)

    def _first_prices(self, sids: I64) -> None:
        members = self.universe.members
        entries = members.rows(np.unique(sids))
        self._recompute_indices(np.unique(members.index[entries]))

    def _recompute_indices(self, indices: I64) -> None:
        if len(indices) == 0:
            return
        universe = self.universe
        sums, missing = kernels.sums_of(
            universe.members, universe.book.price, indices, self.n_indices
        )
        self.sums[indices] = sums[indices]
        self.missing[indices] = missing[indices]
        self._mark_dirty(indices)

    # ------------------------------------------------------------------ fx and references

    def _apply_fx(self, rates: Sequence[FxRate], screen: Screen) -> None:
        outcomes = screen.outcomes
        updated = False
        for r in rates:
            pair = r.pair
            ts = screen.now_ns if r.ts is None else r.ts
            if not (
                len(pair) == 6 and pair[:3] in KNOWN_CURRENCIES and pair[3:] in KNOWN_CURRENCIES
            ):
                outcomes[REJECTED, UNKNOWN_PAIR] += 1
            elif not (math.isfinite(r.rate) and r.rate > 0.0):
                outcomes[REJECTED, BAD_PRICE] += 1
            elif ts > screen.future_limit:
                outcomes[REJECTED, FUTURE_TS] += 1
            elif not self.universe.update_fx(pair, r.rate, ts):
                outcomes[REJECTED, OUT_OF_ORDER] += 1
            else:
                outcomes["accepted", "ok"] += 1
                updated = True
        if updated:
            self._recompute_indices(self.universe.refresh_fx())
            if self.funds is not None:
                self.funds.recompute()

    def _reference(self, ref: ReferenceLevel, result: BatchResult) -> None:
        if ref.index not in self._series_by_id:
            result.reject_reference(ref.index, "unknown_index")
            return
        if not (math.isfinite(ref.level) and ref.level > 0):
            result.reject_reference(ref.index, "bad_level")
            return
        self.references[ref.index] = (ref.level, ref.ts or 0)
        level = self.level_of(ref.index)
        if level is not None:
            result.deviations = {**result.deviations, ref.index: (level / ref.level - 1.0) * 1e4}

    def deviation_bps(self, series: str) -> float | None:
        """Computed level vs the last reference level for ``series``, in basis points."""
        ref = self.references.get(series)
        level = self.level_of(series)
        if ref is None or level is None:
            return None
        return (level / ref[0] - 1.0) * 1e4

    # ------------------------------------------------------------------ establishing levels

    def _finish(self, now: int, screen: Screen) -> None:
        """Fire the events now due, fix new divisors, and list the series that changed."""
        result = screen.result
        result.newest_ts = screen.newest
        if self._next_trigger <= now:
            self._fire_due(now, screen)
        if self._maybe_unestablished:
            self._establish_ready()
        if self.funds is not None and self.funds.has_changes:
            self._funds_changed(result)
        if screen.resets:
            names = self.universe.book.names
            result.add_seq_resets(names[sid] for sid in dict.fromkeys(screen.resets))
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
            members = self.universe.members
            self._establish(
                np.flatnonzero(np.isnan(self.divisor) & (self.missing == 0) & (members.count > 0))
            )

    @property
    def _unestablished(self) -> int:
        return int(np.isnan(self.divisor).sum()) if self._maybe_unestablished else 0

    def _establish(self, candidates: I64) -> None:
        """Fix the divisor of indices that just got their first complete set of prices."""
        candidates = candidates[
            np.isnan(self.divisor[candidates])
            & (self.missing[candidates] == 0)
            & (self.universe.members.count[candidates] > 0)
        ]
        if len(candidates) == 0:
            return
        for j in candidates.tolist():
            if self.weightings[j].sets_weights_from_prices:
                self.universe.set_equal_weights(j, EQUAL_WEIGHT_NOTIONAL)
        self._recompute_indices(candidates)
        sums = self.sums[candidates]
        given = self.configured_divisor[candidates]
        self.divisor[candidates] = np.where(
            np.isnan(given), sums / self.base_value[candidates], given
        )
        self.returns.start(candidates, self.sums[candidates] / self.divisor[candidates])
        for j in candidates.tolist():
            self._publishable_series[j] = self._series_of_index[j]
        self._publishable_index[candidates] = True
        self._row_cache.clear()  # rows list the series of established indices
        self._mark_dirty(candidates)
        self._maybe_unestablished = bool(np.isnan(self.divisor).any())
        self._revise()

    # ------------------------------------------------------------------ scheduled events

    def _submit(self, action: Action, now: int, result: BatchResult) -> None:
        effective = now if action.effective is None else action.effective
        if isinstance(action, BasketChange):
            effective = self._basket_open(action.fund, effective)
        if action.id in self.applied or action.id in self.agenda.ids:
            result.reject_action(action.id, "duplicate")
            return
        if effective < now - self.id_retention_ns:
            # Older than the ids we remember: it may have been applied and forgotten.
            result.reject_action(action.id, "expired")
            return
        if self.agenda.actions >= self.max_pending:
            result.reject_action(action.id, "too_many_pending")
            return
        self.agenda.push(effective, effective, action)
        result.accept_action(action.id)
        self._revise()
        self._refresh_trigger()

    def _refresh_trigger(self) -> None:
        trigger = self.agenda.next_trigger
        self._next_trigger = NO_TRIGGER if trigger is None else trigger

    def _fire_due(self, now: int, screen: Screen) -> None:
        while self._next_trigger <= now:
            self._fire_next(screen)

    def _fire_next(self, screen: Screen) -> None:
        """Fire the first pending event (an action, or a calendar's close)."""
        # An index completed by this batch's earlier ticks has its divisor before the event.
        self._establish_ready()
        pending = self.agenda.pop()
        self._refresh_trigger()
        result = self._result = screen.result  # where closes taken by the event report
        event: Event = pending.event
        if isinstance(event, ScheduledClose):
            self._close_calendar(event)
            return
        outcome = apply_action(self, event, pending.cut)
        self._revise()
        if isinstance(outcome, str):
            result.reject_action(event.id, outcome)
        else:
            self.applied[event.id] = pending.cut
            self.applied_actions += 1
            result.add_audit(outcome)
            if self.funds is not None:
                self._funds_follow(event)
        self._forget_old_ids(pending.cut)

    def _forget_old_ids(self, now: int) -> None:
        """Applied ids are remembered for ``id_retention`` (older actions are refused as
        expired, so forgetting them cannot let one apply twice), and at most MAX_APPLIED."""
        applied = self.applied
        horizon = now - self.id_retention_ns
        if len(applied) > 1024 and next(iter(applied.values())) < horizon:
            self.state.applied = applied = {k: v for k, v in applied.items() if v >= horizon}
        if len(applied) > MAX_APPLIED_IDS:
            self.state.applied = dict(list(applied.items())[len(applied) // 2 :])

    @property
    def pending_actions(self) -> int:
        return self.agenda.actions

    # ------------------------------------------------------------------ sessions and closes

    def _follow_sessions(self, now: int) -> None:
        """Start each calendar's cursor on first use, and keep the tick gate current."""
        rules = self.sessions
        assert rules is not None
        if len(self.cursors) < len(self.calendars):
            for name in self.calendars:
                if name not in self.cursors:
                    cursor = self.cursors[name] = Cursor(name, rules.source)
                    cursor.start(now)
                    self._schedule_close(cursor)
            self._gate_layout = -1
        if self._gate_layout != self.universe.layout:
            self._update_gate()

    def _schedule_close(self, cursor: Cursor) -> None:
        rules = self.sessions
        session = cursor.current
        if rules is None or session is None:
            return
        cut = session.close_ns + 1
        trigger = session.close_ns + rules.close_delay_ns
        next_open = cursor.next_open()
        if next_open is not None and next_open <= trigger:
            trigger = next_open  # sessions back to back (24/7): the next one's ticks close it
        if not rules.reject_outside:
            trigger = cut  # ticks after the close are accepted: they close it at once
        self.agenda.push(cut, trigger, ScheduledClose(cursor.name, session))
        self._refresh_trigger()

    def _update_gate(self) -> None:
        """The session a symbol's ticks must be stamped in: the union of the current
        sessions of the calendars of the indices holding it."""
        rules = self.sessions
        book = self.universe.book
        n = len(book)
        self._gate_layout = self.universe.layout
        if rules is None or not rules.reject_outside:
            book.set_sessions(np.full(n, NO_TS, np.int64), np.full(n, MAX_TS, np.int64))
            return
        opens = np.full(n, MAX_TS, dtype=np.int64)
        closes = np.full(n, NO_TS, dtype=np.int64)
        members = self.universe.members
        held = np.zeros(n, dtype=np.bool_)
        code_of_entry = self._calendar_code[members.index]
        for code, name in enumerate(self.calendars):
            cursor = self.cursors.get(name)
            symbols = np.unique(members.sid[code_of_entry == code])
            held[symbols] = True
            if cursor is None or cursor.current is None:
                continue
            opens[symbols] = np.minimum(opens[symbols], cursor.session_start())
            closes[symbols] = np.maximum(closes[symbols], cursor.current.close_ns)
        # Symbols no index holds take any ts (they move nothing).
        opens[~held] = NO_TS
        closes[~held] = MAX_TS
        book.set_sessions(opens, closes)

    def _close_calendar(self, event: ScheduledClose) -> None:
        cursor = self.cursors.get(event.calendar)
        if cursor is None or cursor.current != event.session:
            return  # superseded (e.g. a restored cursor moved on)
        indices = [j for j, name in enumerate(self.calendar_of) if name == event.calendar]
        self._take_close(indices, event.session.date, event.session.close_ns)
        cursor.advance()
        self._schedule_close(cursor)
        self._update_gate()
        self._revise()

    def roll(
        self, indices: Iterable[int] | None, effective: int, action_id: str = ""
    ) -> list[AuditRecord]:
        """An operator's close of some indices (None: all) at ``effective``."""
        js = list(range(self.n_indices)) if indices is None else list(indices)
        session = ""
        if js and self.calendar_of[js[0]] in self.cursors:
            current = self.cursors[self.calendar_of[js[0]]].current
            session = current.date if current is not None else ""
        levels = self._take_close(js, session, effective)
        return [
            AuditRecord(
                action_id=action_id,
                action="close",
                index=self.index_ids[j],
                symbol="",
                effective=effective,
                divisor_before=float(self.divisor[j]),
                divisor_after=float(self.divisor[j]),
                level_before=levels.get(j, math.nan),
                level_after=levels.get(j, math.nan),
            )
            for j in js
        ]

    def _take_close(self, indices: list[int], session: str, close_ns: int) -> dict[int, float]:
        """The official close of ``indices``: PR, TR and NTR levels from exact sums; then
        today's levels become the bases of tomorrow's and the dividend points start over."""
        result = self._result
        js = np.array([j for j in indices if not math.isnan(self.divisor[j])], dtype=np.int64)
        if len(js) == 0:
            return {}
        universe = self.universe
        exact, missing = kernels.sums_of(universe.members, universe.book.price, js, self.n_indices)
        self.sums[js] = exact[js]
        self.missing[js] = missing[js]
        returns = self.returns
        pr = self.sums[js] / self.divisor[js]
        tr, ntr = returns.total(pr, js), returns.net(pr, js)
        gross, net = returns.gross_points[js].copy(), returns.net_points[js].copy()
        by_variant = {"price": pr, "total": tr, "net": ntr}
        slot = {j: k for k, j in enumerate(js.tolist())}
        if result is not None:
            result.add_closes(
                CloseRecord(
                    series=s,
                    index=self.index_ids[j],
                    session=session,
                    close_ns=close_ns,
                    level=float(by_variant[variant][k]),
                    divisor=float(self.divisor[j]),
                    pr_close=float(pr[k]),
                    tr_close=float(tr[k]),
                    ntr_close=float(ntr[k]),
                    gross_points=float(gross[k]),
                    net_points=float(net[k]),
                )
                for s, j, variant in self.series
                if (k := slot.get(j)) is not None
            )
        if self.funds is not None:
            closes = {
                s: float(by_variant[variant][k])
                for s, j, variant in self.series
                if (k := slot.get(j)) is not None
            }
            navs = self.funds.close(closes, session, close_ns)
            if navs and result is not None:
                result.add_navs(navs)
        returns.roll(js, pr)
        self._mark_dirty(js)
        self._revise()
        return {j: float(pr[k]) for j, k in slot.items()}

    # ------------------------------------------------------------------ funds

    def _take_quotes(self, ticks: Sequence[Tick], now: int, received: int) -> None:
        """Bid and ask of listing ticks (the premium uses their mid).  A quote is taken only
        with a usable tick: two positive finite prices with bid <= ask, a positive finite
        last price, not stamped beyond ``max_future_s``; any other is ignored (its tick is
        screened as usual), and an older quote never replaces a newer one."""
        funds = self.funds
        assert funds is not None
        future_limit = received + self.max_future_ns
        for t in ticks:
            if t.ask is not None and t.bid is not None:
                bid, ask, ts = t.bid, t.ask, now if t.ts is None else t.ts
                if (
                    math.isfinite(bid)
                    and math.isfinite(ask)
                    and 0.0 < bid <= ask
                    and math.isfinite(t.price)
                    and t.price > 0.0
                    and ts <= future_limit
                ):
                    funds.quote(t.symbol, bid, ask, ts)

    def _funds_changed(self, result: BatchResult) -> None:
        funds = self.funds
        assert funds is not None
        if funds.waiting:
            funds.establish(self._tracked_levels())
        result.funds_changed = funds.take_changed()

    def _tracked_levels(self) -> dict[str, float]:
        funds = self.funds
        if funds is None:
            return {}
        out = {}
        for series in set(funds.tracks):
            level = self.level_of(series)
            out[series] = math.nan if level is None else level
        return out

    def _funds_follow(self, event: Action) -> None:
        """A corporate action moved prices (and, for splits and rights, share counts):
        baskets follow, so a fund's value does not jump with an adjusted price."""
        funds = self.funds
        assert funds is not None
        if isinstance(event, Split):
            funds.scale_holding(event.symbol, event.ratio)
        elif isinstance(event, Rights):
            funds.credit(event.symbol, -event.ratio * event.price)  # subscribed
            funds.scale_holding(event.symbol, 1.0 + event.ratio)
        elif isinstance(event, Dividend):
            funds.credit(event.symbol, event.amount * (1.0 - self._withholding(event.symbol)))
        elif isinstance(event, SpecialDividend):
            funds.credit(event.symbol, event.amount)
        elif isinstance(event, Spinoff):
            funds.credit(event.symbol, event.ratio * event.price)  # spun-off shares, as cash
        funds.recompute()

    def _withholding(self, symbol: str) -> float:
        """The dividend withholding rate of a symbol, as its index membership gives it (0
        when no index holds it): the fund suffers what the NTR series it tracks assumes."""
        sid = self.universe.book.ids[symbol]
        if sid < 0:
            return 0.0
        rows = self.universe.members.row_of(sid)
        return float(self.universe.members.withholding[rows[0]]) if len(rows) else 0.0

    def _basket_open(self, fund_id: str, effective: int) -> int:
        """A basket takes effect at the first session open at or after ``effective`` (of
        the calendar of the series the fund tracks); without sessions, at ``effective``."""
        funds = self.funds
        f = funds.slot.get(fund_id) if funds is not None else None
        if funds is None or f is None or self.sessions is None:
            return effective
        slot = self._series_by_id.get(funds.tracks[f])
        if slot is None:
            return effective
        cursor = self.cursors.get(self.calendar_of[slot[0]])
        if cursor is None or cursor.current is None:
            return effective
        if cursor.current.open_ns >= effective:
            return cursor.current.open_ns
        later = cursor.next_open()
        return later if later is not None and later >= effective else effective

    def replace_basket(self, fund_id: str, basket: Basket) -> bool:
        """The ``basket`` action's effect (the action context's way to the funds)."""
        if self.funds is None:
            return False
        f = self.funds.slot.get(fund_id)
        if f is None:
            return False
        currency = self.funds.definitions[f].currency
        symbols = [(h.symbol, h.currency or currency) for h in basket.holdings]
        self.universe.add_symbols(symbols, self.now)
        return self.funds.replace_basket(fund_id, basket)

    def fund_table(self) -> FundTable | None:
        """Every fund's figures as arrays (metrics); None without funds."""
        return None if self.funds is None else self.funds.table(self._tracked_levels())

    def fund_levels(
        self, funds: Iterable[str] | None = None, *, now: int | None = None
    ) -> list[FundLevel]:
        """Live figures of every fund (or of those named): iNAV, listing, premium, intraday
        TD, staleness of the holdings at market time ``now``."""
        book = self.funds
        if book is None:
            return []
        if funds is None:
            picks = list(range(book.n_funds))
        else:
            picks = sorted({book.slot[f] for f in funds if f in book.slot})
        if not picks:
            return []
        at = self.now if now is None else now
        n = len(self.universe.book)
        stale_symbol = (self.universe.book.fresh_ns[:n] < at - self.stale_after_ns) | np.isnan(
            self.universe.book.price[:n]
        )
        return book.levels(picks, self._tracked_levels(), stale_symbol)

    # ------------------------------------------------------------------ the action context

    def index_slot(self, index_id: str) -> int | None:
        return self.slot.get(index_id)

    def index_id(self, j: int) -> str:
        return self.index_ids[j]

    def weighting(self, j: int) -> Weighting:
        return self.weightings[j]

    def divisor_of(self, j: int) -> float:
        return float(self.divisor[j])

    def level(self, j: int) -> float:
        return float(self.sums[j] / self.divisor[j])

    def unpriced(self, j: int) -> int:
        return int(self.missing[j])

    def first_prices(self, sids: I64) -> None:
        self._first_prices(sids)

    def add_dividend_points(self, j: int, gross: float, net: float) -> None:
        self.returns.add_dividend(j, gross, net)
        self._mark_dirty([j])

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
        universe = self.universe
        js = np.unique(np.fromiter(indices, dtype=np.int64))
        self._newest_per_index()  # fold pending stamps while the membership is the old one
        before, missing_before = kernels.sums_of(
            universe.members, universe.book.price, js, self.n_indices
        )
        divisor_before = self.divisor[js].copy()
        change()
        members = universe.members
        # New members bring their newest tick with them.
        kernels.raise_newest(
            members,
            self.newest_ts,
            members.sid[np.isin(members.index, js)],
            universe.book.source_ts,
        )
        after, missing_after = kernels.sums_of(members, universe.book.price, js, self.n_indices)
        divisor_after = continuous_divisors(
            divisor_before, before[js], after[js], missing_before[js], missing_after[js]
        )
        self.divisor[js] = divisor_after
        self.sums[js] = after[js]
        self.missing[js] = missing_after[js]
        self._mark_dirty(js)
        self._row_cache.clear()
        return audit_records(
            action_id,
            action,
            [self.index_ids[j] for j in js.tolist()],
            symbol,
            effective,
            divisor_before,
            divisor_after,
            before[js],
            after[js],
            missing_before[js],
            missing_after[js],
        )

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

    def series_table(self, now: int | None = None) -> SeriesTable:
        """Level, previous close, stale and constituent counts and reference deviation of
        every series, vectorized (see :class:`SeriesTable`)."""
        js = self._series_index
        pr = self.pr_levels()
        returns = self.returns
        variant = self._series_variant
        with np.errstate(invalid="ignore", divide="ignore"):
            by_variant = np.stack([pr, returns.total(pr), returns.net(pr)])
            closes = np.stack([returns.pr_close, returns.tr_close, returns.ntr_close])
            level = by_variant[variant, js]
            prev_close = closes[variant, js]
            reference = np.full(len(js), np.nan)
            for series, (ref_level, _) in self.references.items():
                k = self._series_position.get(series)
                if k is not None:
                    reference[k] = ref_level
            deviation = (level / reference - 1.0) * 1e4
        stale = self._stale_per_index(self.now if now is None else now)
        return SeriesTable(
            self.series_ids,
            level,
            prev_close,
            stale.take(js),
            self.universe.members.count.take(js) if len(js) else np.zeros(0, np.int64),
            deviation,
        )

    def series_without_level(self) -> list[str]:
        """The series :meth:`level_of` has no level for (no divisor yet: prices or FX
        missing), in series order, a column at a time: ``/readyz`` asks at every probe."""
        missing = np.isnan(self.divisor[self._series_index])
        return [str(s) for s in self._series_names[missing].tolist()]

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

    def levels(
        self, series: Iterable[str] | None = None, *, now: int | None = None
    ) -> list[SeriesLevel]:
        """:meth:`level_columns`, one :class:`SeriesLevel` per series."""
        return self.level_columns(series, now=now).rows()

    def level_columns(
        self, series: Iterable[str] | None = None, *, now: int | None = None
    ) -> LevelColumns:
        """Published fields of every established series (or of those named), in series order,
        with staleness at market time ``now`` (default: the latest the engine was given).

        Publishing metadata is settled here, once per publish cycle rather than per batch:
        the vector path's pending newest-tick stamps are folded in, and stale counts are
        recounted only if some constituent became stale or fresh since the last read.  Every
        field is computed a column at a time: no Python work per series but its id."""
        if series is None:
            picks = np.arange(len(self.series), dtype=np.int64)
        else:
            position = self._series_position
            wanted = [position[s] for s in series if s in position]
            picks = np.unique(np.array(wanted, dtype=np.int64))
        picks = picks[self._publishable_index[self._series_index[picks]]]
        if not len(picks):
            return LevelColumns.empty()
        series_js = self._series_index[picks]
        js, slot = np.unique(series_js, return_inverse=True)
        stale = self._stale_per_index(self.now if now is None else now).take(js)
        self._last_stale[js] = stale
        newest = self._newest_per_index().take(js)
        divisor = self.divisor.take(js)
        pr = self.sums.take(js) / divisor
        returns = self.returns
        with np.errstate(divide="ignore", invalid="ignore"):
            by_variant = np.stack([pr, returns.total(pr, js), returns.net(pr, js)])
            close_by_variant = np.stack(
                [returns.pr_close.take(js), returns.tr_close.take(js), returns.ntr_close.take(js)]
            )
            rows = self._series_variant[picks]
            level = by_variant[rows, slot]
            prev_close = close_by_variant[rows, slot]
            change = level - prev_close
            change_pct = np.where(prev_close != 0.0, (level / prev_close - 1.0) * 100.0, np.nan)
            count = self.universe.members.count.take(js)[slot]
            stale_count = stale[slot]
            coverage = np.where(count != 0, (count - stale_count) / np.maximum(count, 1), 0.0)
        return LevelColumns(
            series=self._series_names[picks].tolist(),
            level=level,
            divisor=divisor[slot],
            source_ts=newest[slot],
            prev_close=prev_close,
            change=change,
            change_pct=change_pct,
            stale=stale_count,
            coverage=coverage,
            constituents=count,
        )

    def _stale_per_index(self, now: int) -> I64:
        """Stale constituents of every index (no tick for stale_after_s, or no price yet).

        The per-symbol mask is cheap; the count per index reads every membership, so it is
        redone only when the mask or the membership has changed since the last read."""
        book = self.universe.book
        n_symbols = len(book)
        stale_symbol = (book.fresh_ns[:n_symbols] < now - self.stale_after_ns) | (
            np.isnan(book.price[:n_symbols])
        )
        key = (stale_symbol.tobytes(), self.universe.layout)
        if self._stale_counts is None or self._stale_counts[0] != key:
            counts = kernels.stale_counts(self.universe.members, stale_symbol, self.n_indices)
            self._stale_counts = (key, counts)
        return self._stale_counts[1]

    def _report_staleness(self, now: int, result: BatchResult) -> None:
        """Series whose stale count moved since it was last read: republished, so a dead feed
        shows in every output even when no price moves."""
        stale = self._stale_per_index(now)
        moved = (stale != self._last_stale) & ~np.isnan(self.divisor)
        if moved.any():
            known = set(result.changed)
            extra = self._series_names[moved[self._series_index]].tolist()
            result.changed.extend(s for s in extra if s not in known)

    def _newest_per_index(self) -> I64:
        if self._any_stamped:
            book = self.universe.book
            stamped = np.flatnonzero(self._stamped[: len(book)])
            self._stamped[stamped] = False
            self._any_stamped = False
            kernels.raise_newest(self.universe.members, self.newest_ts, stamped, book.source_ts)
        return self.newest_ts

    def known_symbols(self) -> list[str]:
        """Every symbol the engine has seen as a constituent, held now or not."""
        return list(self.universe.book.names)

    def member_symbols(self) -> set[str]:
        """Every symbol some index or fund holds now, and the funds' listings (what a shard
        subscribes to)."""
        universe = self.universe
        names = universe.book.names
        held = {names[sid] for sid in np.unique(universe.members.sid).tolist()}
        if self.funds is not None:
            held.update(symbol for symbol, _ in self.funds.symbols())
        return held

    def fund_holdings(self) -> dict[str, int]:
        """Fund id -> holdings in its current basket (for the directory)."""
        if self.funds is None:
            return {}
        baskets = self.funds.state.baskets
        return {f: len(b.holdings) for f, b in zip(self.funds.ids, baskets, strict=True)}

    def member_counts(self) -> dict[str, int]:
        """Index id -> number of constituents (for the directory of series)."""
        counts = self.universe.members.count
        return {
            index_id: int(counts[j]) if j < len(counts) else 0 for index_id, j in self.slot.items()
        }

    def constituents(self, index_id: str) -> dict[str, float]:
        """Symbol -> index shares q of one index (for audits and tests)."""
        universe = self.universe
        m = universe.members
        rows = m.of_index(self.slot[index_id])
        names = universe.book.names
        return {names[s]: float(q) for s, q in zip(m.sid[rows], m.q[rows], strict=True)}

    def price_of(self, symbol: str) -> float | None:
        book = self.universe.book
        sid = book.ids.get(symbol)
        if sid is None or math.isnan(book.price[sid]):
            return None
        return float(book.price[sid])

    def session_of(self, index_id: str) -> tuple[str, int, int] | None:
        """(date, open, close) of the current session of an index's calendar."""
        cursor = self.cursors.get(self.calendar_of[self.slot[index_id]])
        if cursor is None or cursor.current is None:
            return None
        s = cursor.current
        return s.date, s.open_ns, s.close_ns

    # ------------------------------------------------------------------ maintenance

    def recompute(self) -> float:
        """Replace every incremental sum by a from-scratch one; returns the largest relative
        drift found (and keeps the largest ever seen in ``max_drift``)."""
        universe = self.universe
        exact, missing = kernels.full_sums(universe.members, universe.book.price, self.n_indices)
        scale = np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
        drift = float(np.max(np.abs(self.sums - exact) / scale)) if self.n_indices else 0.0
        # Publishers republish what moved, so the exact sums reach Redis too.
        self._mark_dirty(self.sums != exact)
        self.sums[:] = exact  # in place: the per-tick path holds a view of it
        self.missing = missing
        self.max_drift = max(self.max_drift, drift)
        if self.funds is not None:
            self.funds.recompute(report_all=False)
        return drift

    def close(self, now: int | None = None) -> Sequence[CloseRecord]:
        """Roll the trading day of every index now (as an operator's ``close`` would)."""
        result = BatchResult()
        self._result = result
        try:
            self.roll(None, 0 if now is None else now)
        finally:
            self._result = None
        return result.closes
