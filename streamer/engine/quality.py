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

``screen_round`` applies the rules to many symbols at once (each symbol at most once);
``screen_one`` is the same rules for a single tick, for batches too small to vectorize.
The two must agree exactly; the property tests check that they do.
"""

from __future__ import annotations

import math
from collections import Counter

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
)
from streamer.engine.universe import F64, I64, NO_SEQ, SymbolBook

Outcomes = Counter[tuple[str, str]]


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
