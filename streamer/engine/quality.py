"""Tick validation, hold-and-confirm and staleness.

Rules for one tick of a known symbol, in order:
1. price must be finite and > 0 (else ``bad_price``);
2. ts must not be later than the batch's receipt time plus the tolerance (``future_ts``): a
   tick from a broken producer clock must never become the symbol's newest;
3. ts must lie in the symbol's session, [session_open, session_close] (``outside_session``);
4. ts must not precede a price-adjusting corporate action already applied (``pre_action``);
5. seq (when given) must exceed the last seq, and ts must not precede the last ts
   (``out_of_order``).  A seq that goes back on a tick stamped at least ``reset_gap`` after
   the symbol's last one is a restarted producer: accepted, and reported in ``resets``;
6. a price more than ``band`` away from the last accepted price is held (``big_move``) unless
   it confirms an earlier held price; the next tick within ``band`` of the held price confirms
   it, any other discards it (``unconfirmed``).  The first price of a symbol has no reference
   and is accepted.

``screen_runs`` accepts, in one vectorized pass, every symbol whose ticks in the batch all
pass against their predecessor (the common case) and returns the positions of the others;
``screen_round`` applies the rules to many symbols at once (each symbol at most once) for those;
``screen_one`` is the same rules for a single tick, for batches too small to vectorize.
They must agree exactly; the property tests check that they do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import msgspec
import numpy as np

from streamer.engine.arrays import F64, I64, NO_SEQ
from streamer.engine.results import (
    ACCEPTED,
    BAD_PRICE,
    BIG_MOVE,
    CONFIRMED,
    FUTURE_TS,
    HELD,
    OK,
    OUT_OF_ORDER,
    OUTSIDE_SESSION,
    PRE_ACTION,
    REJECTED,
    UNCONFIRMED,
    BatchResult,
    Outcomes,
)
from streamer.engine.universe import SymbolBook, SymbolCells

# Outcome keys built once: the per-tick path counts one per tick.
ACCEPTED_OK = (ACCEPTED, OK)
ACCEPTED_CONFIRMED = (ACCEPTED, CONFIRMED)
HELD_BIG_MOVE = (HELD, BIG_MOVE)
REJECTED_BAD_PRICE = (REJECTED, BAD_PRICE)
REJECTED_FUTURE_TS = (REJECTED, FUTURE_TS)
REJECTED_OUTSIDE_SESSION = (REJECTED, OUTSIDE_SESSION)
REJECTED_PRE_ACTION = (REJECTED, PRE_ACTION)
REJECTED_OUT_OF_ORDER = (REJECTED, OUT_OF_ORDER)
REJECTED_UNCONFIRMED = (REJECTED, UNCONFIRMED)


class Screen(msgspec.Struct, gc=False):
    """One batch's screening parameters, and where its findings go.  A Struct: one is made
    per batch (msgspec builds it in C, a third of a slots class's cost) and read per tick."""

    band: float  # relative move beyond which a tick is held
    now_ns: int  # market clock: stamps fresh_ns of accepted ticks
    future_limit: int  # ticks stamped after this are future_ts (receipt + tolerance)
    reset_gap: int  # a lower seq this long after the symbol's last tick is a restart
    result: BatchResult
    outcomes: Outcomes  # result.outcomes, one attribute away
    resets: list[int] = msgspec.field(default_factory=list)  # sids whose seq restarted
    newest: int = 0  # ts of the newest tick accepted


class Runs(NamedTuple):
    """What ``screen_runs`` found: the batch's symbols and what is left for the rounds."""

    touched: I64  # every symbol of the batch, ascending
    before: F64  # their prices before the batch
    rest: I64  # positions (ascending) of the ticks left for the rounds


def screen_runs(
    book: SymbolBook, sids: I64, prices: F64, ts: I64, seqs: I64, screen: Screen
) -> Runs:
    """Accept whole runs of clean ticks at once; the rest is left for the rounds.

    A symbol's run is clean when nothing is held for it and each of its ticks, in arrival
    order, would pass every rule against the tick before it (the first against the book):
    then applying them one by one accepts all, and only the last one's price, ts and seq
    remain.  Runs mixing ticks with and without seq are left to the rounds.  Gathers use
    ``take``, about twice as fast as fancy indexing.
    """
    n = len(sids)
    key = sids.astype(np.uint16) if len(book) <= 1 << 16 else sids
    order = np.argsort(key, kind="stable")
    s, p, t = sids.take(order), prices.take(order), ts.take(order)
    head = np.empty(n, dtype=np.bool_)
    head[0] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    heads = np.flatnonzero(head)
    touched = s.take(heads)
    before = book.price.take(touched)
    prev_price = np.empty(n)
    prev_price[1:] = p[:-1]
    prev_price[heads] = before
    prev_ts = np.empty(n, dtype=np.int64)
    prev_ts[1:] = t[:-1]
    prev_ts[heads] = book.last_ts.take(touched)
    with np.errstate(invalid="ignore", divide="ignore"):
        clean = (
            (p > 0.0)
            & (p < np.inf)
            & (t >= prev_ts)
            & (t <= screen.future_limit)
            & np.isnan(book.held.take(s))
            & (np.isnan(prev_price) | (np.abs(p / prev_price - 1.0) <= screen.band))
        )
    if book.gated:
        clean &= (t >= book.session_open.take(s)) & (t <= book.session_close.take(s))
    if book.floors_set:
        clean &= t >= book.floor_ts.take(s)
    any_seq = bool((seqs != NO_SEQ).any())
    if any_seq:
        q = seqs.take(order)
        has_seq = q != NO_SEQ
        prev_seq = np.empty(n, dtype=np.int64)
        prev_seq[1:] = q[:-1]
        prev_seq[heads] = book.last_seq.take(touched)
        clean &= ~has_seq | (prev_seq == NO_SEQ) | (q > prev_seq)
        # Within a run, a tick without seq after one with seq would compare against an older
        # seq than prev_seq says: leave mixed runs to the rounds.
        previous_has_seq = np.empty(n, dtype=np.bool_)
        previous_has_seq[0] = False
        previous_has_seq[1:] = has_seq[:-1]
        clean &= head | (has_seq == previous_has_seq)
    # The last tick of each run (sorted positions) is what remains of a clean run.
    lasts = np.empty(len(heads), dtype=np.int64)
    lasts[:-1] = heads[1:] - 1
    lasts[-1] = n - 1
    if clean.all():  # the common case: every run is clean
        rest: I64 = np.zeros(0, dtype=np.int64)
        clean_sids = touched
    else:
        # A run is clean when none of its ticks is not: mark the symbols with a dirty tick.
        dirty_symbol = np.zeros(len(book), dtype=np.bool_)
        dirty_symbol[s[~clean]] = True
        clean_run = ~dirty_symbol.take(touched)
        lasts, clean_sids = lasts[clean_run], touched[clean_run]
        rest = np.sort(order[dirty_symbol.take(s)])
    last_t = t.take(lasts)
    if len(last_t):
        screen.newest = max(screen.newest, int(last_t.max()))
    book.price[clean_sids] = p.take(lasts)
    book.source_ts[clean_sids] = last_t
    book.last_ts[clean_sids] = last_t
    book.fresh_ns[clean_sids] = screen.now_ns
    if any_seq:
        # The run's newest seq is its last one when all have seq; none when none have.
        with_seq = has_seq.take(lasts)
        book.last_seq[clean_sids[with_seq]] = q.take(lasts)[with_seq]
    _count(screen.outcomes, ACCEPTED, OK, n - len(rest))
    return Runs(touched, before, rest)


def screen_round(
    book: SymbolBook, sids: I64, prices: F64, ts: I64, seqs: I64, screen: Screen
) -> None:
    """Apply one round of ticks (distinct symbols) to the book's prices."""
    outcomes = screen.outcomes
    good_price = np.isfinite(prices) & (prices > 0.0)
    future = good_price & (ts > screen.future_limit)
    timely = good_price & ~future
    if book.gated:
        outside = timely & ((ts < book.session_open[sids]) | (ts > book.session_close[sids]))
        timely &= ~outside
        _count(outcomes, REJECTED, OUTSIDE_SESSION, int(outside.sum()))
    pre_action = timely & (ts < book.floor_ts[sids])
    last_seq = book.last_seq[sids]
    last_ts = book.last_ts[sids]
    seq_back = (seqs != NO_SEQ) & (last_seq != NO_SEQ) & (seqs <= last_seq)
    with np.errstate(over="ignore"):
        restart = seq_back & (ts - screen.reset_gap >= last_ts)
    out_of_order = timely & ~pre_action & ((seq_back & ~restart) | (ts < last_ts))
    valid = timely & ~pre_action & ~out_of_order
    _count(outcomes, REJECTED, BAD_PRICE, len(sids) - int(good_price.sum()))
    _count(outcomes, REJECTED, FUTURE_TS, int(future.sum()))
    _count(outcomes, REJECTED, PRE_ACTION, int(pre_action.sum()))
    _count(outcomes, REJECTED, OUT_OF_ORDER, int(out_of_order.sum()))
    restarted = valid & restart
    if restarted.any():
        screen.resets.extend(sids[restarted].tolist())
    if not valid.all():
        sids, prices, ts, seqs = sids[valid], prices[valid], ts[valid], seqs[valid]
    if len(sids) == 0:
        return
    book.last_ts[sids] = ts
    has_seq = seqs != NO_SEQ
    book.last_seq[sids[has_seq]] = seqs[has_seq]

    band = screen.band
    current = book.price[sids]
    held = book.held[sids]
    with np.errstate(invalid="ignore", divide="ignore"):
        confirms = np.abs(prices / held - 1.0) <= band  # False where nothing is held (NaN)
        in_band = np.isnan(current) | (np.abs(prices / current - 1.0) <= band)
    accept = confirms | in_band
    had_held = ~np.isnan(held)
    new_hold = ~accept

    accepted = sids[accept]
    if len(accepted):
        screen.newest = max(screen.newest, int(ts[accept].max()))
    book.price[accepted] = prices[accept]
    book.source_ts[accepted] = ts[accept]
    book.fresh_ns[accepted] = screen.now_ns
    book.held[sids[had_held]] = np.nan
    book.held[sids[new_hold]] = prices[new_hold]

    _count(outcomes, ACCEPTED, OK, int(accept.sum()))
    _count(outcomes, ACCEPTED, CONFIRMED, int(confirms.sum()))
    _count(outcomes, REJECTED, UNCONFIRMED, int((had_held & ~confirms).sum()))
    _count(outcomes, HELD, BIG_MOVE, int(new_hold.sum()))


def screen_one(
    cells: SymbolCells, gated: bool, sid: int, price: float, ts: int, seq: int, screen: Screen
) -> bool:
    """``screen_round`` for one tick; True when the price was accepted."""
    outcomes = screen.outcomes
    if not (price > 0.0 and price < math.inf):  # also False for NaN
        outcomes[REJECTED_BAD_PRICE] += 1
        return False
    if ts > screen.future_limit:
        outcomes[REJECTED_FUTURE_TS] += 1
        return False
    if gated and (ts < cells.session_open[sid] or ts > cells.session_close[sid]):
        outcomes[REJECTED_OUTSIDE_SESSION] += 1
        return False
    if ts < cells.floor_ts[sid]:
        outcomes[REJECTED_PRE_ACTION] += 1
        return False
    last_seq = cells.last_seq[sid]
    last_ts = cells.last_ts[sid]
    if seq != NO_SEQ and last_seq != NO_SEQ and seq <= last_seq:
        if ts - screen.reset_gap < last_ts:
            outcomes[REJECTED_OUT_OF_ORDER] += 1
            return False
        screen.resets.append(sid)  # the producer restarted: its new seq counts from here
    elif ts < last_ts:
        outcomes[REJECTED_OUT_OF_ORDER] += 1
        return False
    cells.last_ts[sid] = ts
    if seq != NO_SEQ:
        cells.last_seq[sid] = seq
    band = screen.band
    current = cells.price[sid]
    in_band = current != current or abs(price / current - 1.0) <= band  # NaN: no price yet
    held = cells.held[sid]
    if held == held:  # a held big move (not NaN): this tick confirms it or discards it
        cells.held[sid] = math.nan
        if abs(price / held - 1.0) <= band:
            outcomes[ACCEPTED_CONFIRMED] += 1
            in_band = True
        else:
            outcomes[REJECTED_UNCONFIRMED] += 1
    if not in_band:
        cells.held[sid] = price
        outcomes[HELD_BIG_MOVE] += 1
        return False
    cells.price[sid] = price
    cells.source_ts[sid] = ts
    cells.fresh_ns[sid] = screen.now_ns
    outcomes[ACCEPTED_OK] += 1
    if ts > screen.newest:
        screen.newest = ts
    return True


def _count(outcomes: Outcomes, outcome: str, reason: str, n: int) -> None:
    if n:
        outcomes[outcome, reason] += n
