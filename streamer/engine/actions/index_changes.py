"""Changes to one index: constituent adds and deletes, rebalances, and closes on demand."""

from __future__ import annotations

import math

import numpy as np

from streamer.config import KNOWN_CURRENCIES, ConstituentSpec
from streamer.engine.actions import handles
from streamer.engine.actions.context import ActionContext, Outcome
from streamer.engine.actions.validation import bad_params, positive
from streamer.wire import AddConstituent, Close, DeleteConstituent, Rebalance


def _unpriced(
    ctx: ActionContext, j: int, symbol: str, currency: str | None, seed: float | None
) -> str | None:
    """Why a new member of established index j could not be valued now, if it could not:
    the divisor adjustment needs its value at current prices (and FX) before it joins."""
    universe = ctx.universe
    sid = universe.book.ids.get(symbol)
    if (sid is None or math.isnan(universe.price(sid))) and seed is None:
        return "no_price"
    source = universe.book.currency[sid] if sid is not None else (currency or "")
    if source and math.isnan(universe.fx_factor(source, j)):
        return "no_fx"
    return None


def _equal_value(ctx: ActionContext, j: int) -> float | None:
    """The value each member of equal-weighted index j holds, if its weights are set."""
    if not ctx.weighting(j).sets_weights_from_prices or math.isnan(ctx.divisor_of(j)):
        return None
    count = len(ctx.universe.rows_of_index(j))
    return ctx.universe.index_value(j) / count if count else None


def _insert(ctx: ActionContext, j: int, specs: list[ConstituentSpec], effective: int) -> None:
    """Add members to index j, their seed prices counting as first prices everywhere."""
    seeded = ctx.universe.insert(j, specs, effective, effective, _equal_value(ctx, j))
    if seeded:
        ctx.first_prices(np.array(seeded, dtype=np.int64))


@handles(AddConstituent)
def add(ctx: ActionContext, a: AddConstituent, effective: int) -> Outcome:
    j = ctx.index_slot(a.index)
    if j is None:
        return "unknown_index"
    bad = bad_params(a.shares, a.iwf, a.awf, a.withholding)
    if bad:
        return bad
    if a.price is not None and not positive(a.price):
        return "bad_price"
    if ctx.weighting(j).method == "cap" and a.shares is None:
        return "missing_shares"
    universe = ctx.universe
    sid = universe.book.ids.get(a.symbol)
    if sid is not None:
        if universe.is_member(sid, j):
            return "already_member"
        if a.currency is not None and a.currency != universe.book.currency[sid]:
            return "currency_mismatch"
    elif a.currency is not None and a.currency not in KNOWN_CURRENCIES:
        return "unknown_currency"
    currency = a.currency or universe.index_currencies[j]
    if not math.isnan(ctx.divisor_of(j)):
        missing = _unpriced(ctx, j, a.symbol, currency, a.price)
        if missing:
            return missing
    spec = ConstituentSpec(
        symbol=a.symbol,
        shares=a.shares or 1.0,
        iwf=a.iwf or 1.0,
        awf=a.awf or 1.0,
        currency=a.currency,
        withholding=a.withholding or 0.0,
        price=a.price,
    )
    return ctx.adjust(
        [j], lambda: _insert(ctx, j, [spec], effective), "add", a.id, a.symbol, effective
    )


@handles(DeleteConstituent)
def delete(ctx: ActionContext, a: DeleteConstituent, effective: int) -> Outcome:
    j = ctx.index_slot(a.index)
    if j is None:
        return "unknown_index"
    universe = ctx.universe
    sid = universe.book.ids.get(a.symbol)
    if sid is None:
        return "unknown_symbol"
    if not universe.is_member(sid, j):
        return "not_member"
    if len(universe.rows_of_index(j)) <= 1:
        return "empty_index"
    return ctx.adjust([j], lambda: universe.remove(j, sid), "delete", a.id, a.symbol, effective)


@handles(Rebalance)
def rebalance(ctx: ActionContext, a: Rebalance, effective: int) -> Outcome:
    j = ctx.index_slot(a.index)
    if j is None:
        return "unknown_index"
    universe = ctx.universe
    established = not math.isnan(ctx.divisor_of(j))
    equal = ctx.weighting(j).sets_weights_from_prices
    specs = list(a.constituents) if a.constituents is not None else None
    if specs is not None:
        if not specs:
            return "empty_index"
        if len({s.symbol for s in specs}) != len(specs):
            return "duplicate_symbol"
        for s in specs:
            bad = bad_params(s.shares, s.iwf, s.awf, s.withholding)
            if bad:
                return bad
            sid = universe.book.ids.get(s.symbol)
            known_currency = universe.book.currency[sid] if sid is not None else None
            if s.currency is not None and known_currency not in (None, s.currency):
                return "currency_mismatch"
            if s.currency is not None and s.currency not in KNOWN_CURRENCIES:
                return "unknown_currency"
            currency = s.currency or known_currency or universe.index_currencies[j]
            missing = _unpriced(ctx, j, s.symbol, currency, s.price)
            if established and missing:
                return missing
    elif equal and established and ctx.unpriced(j) > 0:
        return "no_price"

    def change() -> None:
        value_before = universe.index_value(j)
        if specs is not None:
            universe.remove(j)
            _insert(ctx, j, specs, effective)
        if equal and established:
            # The same total value spread evenly: every member ends with S / N.
            universe.set_equal_weights(j, value_before / len(universe.rows_of_index(j)))
        elif specs is None:
            universe.requote_index(j)

    return ctx.adjust([j], change, "rebalance", a.id, "", effective)


@handles(Close)
def close(ctx: ActionContext, a: Close, effective: int) -> Outcome:
    """An operator's close: the official close of one index (or all) now."""
    if a.index is None:
        return ctx.roll(None, effective, a.id)
    j = ctx.index_slot(a.index)
    if j is None:
        return "unknown_index"
    return ctx.roll([j], effective, a.id)
