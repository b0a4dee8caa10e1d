"""Tick validation, hold-and-confirm and staleness.

Rules for one tick of a known symbol, in order:
1. price must be finite and > 0 (else ``bad_price``);
2. ts must not precede a price-adjusting corporate action already applied (``pre_action``);
3. seq (when given) must exceed the last seq, and ts must not precede the last ts
   (``out_of_order``);
4. a price more than ``band`` away from the last accepted price is held (``big_move``) unless
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

import numpy as np

from streamer.engine.results import (
    ACCEPTED,
    BAD_PRICE,
    BIG_MOVE,
    CONFIRMED,
    HELD,
    OK,
    OUT_OF_ORDER,
    PRE_ACTION,
    REJECTED,
    UNCONFIRMED,
    Outcomes,
)
from streamer.engine.universe import F64, I64, NO_SEQ, SymbolBook


def screen_runs(
    book: SymbolBook,
    sids: I64,
    prices: F64,
    ts: I64,
    seqs: I64,
    band: float,
    now_ns: int,
    outcomes: Outcomes,
) -> I64:
    """Accept whole runs of clean ticks at once; returns the positions left for the rounds.

    A symbol's run is clean when nothing is held for it and each of its ticks, in arrival
    order, would pass every rule against the tick before it (the first against the book):
    then applying them one by one accepts all, and only the last one's price, ts and seq
    remain.  Runs mixing ticks with and without seq are left to the rounds.
    """
    n = len(sids)
    key = sids.astype(np.uint16) if len(book) <= 1 << 16 else sids
    order = np.argsort(key, kind="stable")
    s, p, t = sids[order], prices[order], ts[order]
    head = np.empty(n, dtype=np.bool_)
    head[0] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    heads = np.flatnonzero(head)
    head_sids = s[heads]
    prev_price = np.empty(n)
    prev_price[1:] = p[:-1]
    prev_price[heads] = book.price[head_sids]
    prev_ts = np.empty(n, dtype=np.int64)
    prev_ts[1:] = t[:-1]
    prev_ts[heads] = book.last_ts[head_sids]
    with np.errstate(invalid="ignore", divide="ignore"):
        clean = (
            (p > 0.0)
            & (p < np.inf)
            & (t >= prev_ts)
            & np.isnan(book.held[s])
            & (np.isnan(prev_price) | (np.abs(p / prev_price - 1.0) <= band))
        )
    if book.floors_set:
        clean &= t >= book.floor_ts[s]
    q = seqs[order]
    has_seq = q != NO_SEQ
    any_seq = bool(has_seq.any())
    if any_seq:
        prev_seq = np.empty(n, dtype=np.int64)
        prev_seq[1:] = q[:-1]
        prev_seq[heads] = book.last_seq[head_sids]
        clean &= ~has_seq | (prev_seq == NO_SEQ) | (q > prev_seq)
        # Within a run, a tick without seq after one with seq would compare against an older
        # seq than prev_seq says: leave mixed runs to the rounds.
        previous_has_seq = np.empty(n, dtype=np.bool_)
        previous_has_seq[0] = False
        previous_has_seq[1:] = has_seq[:-1]
        clean &= head | (has_seq == previous_has_seq)
    # A run is clean when none of its ticks is not: mark the symbols with a dirty tick.
    dirty_symbol = np.zeros(len(book), dtype=np.bool_)
    dirty_symbol[s[~clean]] = True
    clean_tick = ~dirty_symbol[s]
    last = np.empty(n, dtype=np.bool_)
    last[-1] = True
    last[:-1] = head[1:]
    last &= clean_tick
    last_sids = s[last]
    book.price[last_sids] = p[last]
    book.source_ts[last_sids] = t[last]
    book.last_ts[last_sids] = t[last]
    book.fresh_ns[last_sids] = now_ns
    if any_seq:
        # The run's newest seq is its last one when all have seq; none when none have.
        with_seq = last & has_seq
        book.last_seq[s[with_seq]] = q[with_seq]
    accepted = int(clean_tick.sum())
    _count(outcomes, ACCEPTED, OK, accepted)
    if accepted == n:
        return np.zeros(0, dtype=np.int64)
    rest: I64 = np.sort(order[~clean_tick])
    return rest


def screen_round(
    book: SymbolBook,
    sids: I64,
    prices: F64,
    ts: I64,
    seqs: I64,
    band: float,
    now_ns: int,
    outcomes: Outcomes,
) -> None:
    """Apply one round of ticks (distinct symbols) to the book's prices."""
    good_price = np.isfinite(prices) & (prices > 0.0)
    pre_action = good_price & (ts < book.floor_ts[sids])
    last_seq = book.last_seq[sids]
    out_of_order = (
        good_price
        & ~pre_action
        & (
            ((seqs != NO_SEQ) & (last_seq != NO_SEQ) & (seqs <= last_seq))
            | (ts < book.last_ts[sids])
        )
    )
    valid = good_price & ~pre_action & ~out_of_order
    _count(outcomes, REJECTED, BAD_PRICE, len(sids) - int(good_price.sum()))
    _count(outcomes, REJECTED, PRE_ACTION, int(pre_action.sum()))
    _count(outcomes, REJECTED, OUT_OF_ORDER, int(out_of_order.sum()))
    if not valid.all():
        sids, prices, ts, seqs = sids[valid], prices[valid], ts[valid], seqs[valid]
    if len(sids) == 0:
        return
    book.last_ts[sids] = ts
    has_seq = seqs != NO_SEQ
    book.last_seq[sids[has_seq]] = seqs[has_seq]

    current = book.price[sids]
    held = book.held[sids]
    with np.errstate(invalid="ignore", divide="ignore"):
        confirms = np.abs(prices / held - 1.0) <= band  # False where nothing is held (NaN)
        in_band = np.isnan(current) | (np.abs(prices / current - 1.0) <= band)
    accept = confirms | in_band
    had_held = ~np.isnan(held)
    new_hold = ~accept

    accepted = sids[accept]
    book.price[accepted] = prices[accept]
    book.source_ts[accepted] = ts[accept]
    book.fresh_ns[accepted] = now_ns
    book.held[sids[had_held]] = np.nan
    book.held[sids[new_hold]] = prices[new_hold]

    _count(outcomes, ACCEPTED, OK, int(accept.sum()))
    _count(outcomes, ACCEPTED, CONFIRMED, int(confirms.sum()))
    _count(outcomes, REJECTED, UNCONFIRMED, int((had_held & ~confirms).sum()))
    _count(outcomes, HELD, BIG_MOVE, int(new_hold.sum()))


def screen_one(
    book: SymbolBook,
    sid: int,
    price: float,
    ts: int,
    seq: int,
    band: float,
    now_ns: int,
    outcomes: Outcomes,
) -> bool:
    """``screen_round`` for one tick; True when the price was accepted."""
    if not (math.isfinite(price) and price > 0.0):
        outcomes[REJECTED, BAD_PRICE] += 1
        return False
    if ts < book.floor_ts[sid]:
        outcomes[REJECTED, PRE_ACTION] += 1
        return False
    last_seq = int(book.last_seq[sid])
    if (seq != NO_SEQ and last_seq != NO_SEQ and seq <= last_seq) or ts < book.last_ts[sid]:
        outcomes[REJECTED, OUT_OF_ORDER] += 1
        return False
    book.last_ts[sid] = ts
    if seq != NO_SEQ:
        book.last_seq[sid] = seq
    current = float(book.price[sid])
    held = float(book.held[sid])
    confirms = not math.isnan(held) and abs(price / held - 1.0) <= band
    in_band = math.isnan(current) or abs(price / current - 1.0) <= band
    if not math.isnan(held):
        book.held[sid] = math.nan
        if confirms:
            outcomes[ACCEPTED, CONFIRMED] += 1
        else:
            outcomes[REJECTED, UNCONFIRMED] += 1
    if confirms or in_band:
        book.price[sid] = price
        book.source_ts[sid] = ts
        book.fresh_ns[sid] = now_ns
        outcomes[ACCEPTED, OK] += 1
        return True
    book.held[sid] = price
    outcomes[HELD, BIG_MOVE] += 1
    return False


def _count(outcomes: Outcomes, outcome: str, reason: str, n: int) -> None:
    if n:
        outcomes[outcome, reason] += n
