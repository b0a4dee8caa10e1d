"""Events of one symbol, in every index that holds it: splits, dividends, rights issues,
spin-offs and share/IWF/AWF changes.

Price-adjusting events also raise the symbol's floor time, so a late tick stamped before the
action cannot bring back an unadjusted price.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from streamer.engine.actions import handles
from streamer.engine.actions.context import ActionContext, Outcome
from streamer.engine.actions.validation import bad_params, positive
from streamer.engine.results import AuditRecord
from streamer.wire import Dividend, SharesChange, SpecialDividend, Spinoff, Split
from streamer.wire import Rights as RightsIssue


def _price_event(
    ctx: ActionContext,
    action_id: str,
    kind: str,
    symbol: str,
    effective: int,
    adjust: Callable[[float], float],
    share_scale: float = 1.0,
) -> Outcome:
    """An event that changes a symbol's price (and maybe its share count) everywhere."""
    universe = ctx.universe
    sid = universe.book.ids.get(symbol)
    if sid is None:
        return "unknown_symbol"

    def change() -> None:
        universe.reprice(sid, adjust, effective)
        if share_scale != 1.0:
            universe.scale_shares(universe.members.row_of(sid), share_scale)

    return ctx.adjust(universe.indices_of_symbol(sid), change, kind, action_id, symbol, effective)


def _priced(ctx: ActionContext, symbol: str) -> float | None:
    """The symbol's price (NaN when it has none yet), None for an unknown symbol."""
    sid = ctx.universe.book.ids.get(symbol)
    return None if sid is None else ctx.universe.price(sid)


def _price_problem(ctx: ActionContext, symbol: str) -> tuple[float, str | None]:
    price = _priced(ctx, symbol)
    if price is None:
        return math.nan, "unknown_symbol"
    if math.isnan(price):
        return price, "no_price"
    return price, None


@handles(Split)
def split(ctx: ActionContext, a: Split, effective: int) -> Outcome:
    if not positive(a.ratio):
        return "bad_ratio"
    ratio = a.ratio
    # Cap/equal: price / r and shares * r leave p*q alone; price-weighted: q stays, S drops.
    return _price_event(ctx, a.id, "split", a.symbol, effective, lambda p: p / ratio, ratio)


@handles(SpecialDividend)
def special_dividend(ctx: ActionContext, a: SpecialDividend, effective: int) -> Outcome:
    price, problem = _price_problem(ctx, a.symbol)
    if problem:
        return problem
    if not positive(a.amount) or a.amount >= price:
        return "bad_amount"
    amount = a.amount
    return _price_event(ctx, a.id, "special_dividend", a.symbol, effective, lambda p: p - amount)


@handles(RightsIssue)
def rights(ctx: ActionContext, a: RightsIssue, effective: int) -> Outcome:
    _, problem = _price_problem(ctx, a.symbol)
    if problem:
        return problem
    if not positive(a.ratio):
        return "bad_ratio"
    if not positive(a.price):
        return "bad_price"
    ratio, subscription = a.ratio, a.price
    return _price_event(
        ctx,
        a.id,
        "rights",
        a.symbol,
        effective,
        lambda p: (p + ratio * subscription) / (1.0 + ratio),
        1.0 + ratio,
    )


@handles(Spinoff)
def spinoff(ctx: ActionContext, a: Spinoff, effective: int) -> Outcome:
    price, problem = _price_problem(ctx, a.symbol)
    if problem:
        return problem
    if not positive(a.ratio) or not positive(a.price):
        return "bad_ratio"
    value = a.ratio * a.price
    if value >= price:
        return "bad_amount"
    return _price_event(ctx, a.id, "spinoff", a.symbol, effective, lambda p: p - value)


@handles(Dividend)
def dividend(ctx: ActionContext, a: Dividend, effective: int) -> Outcome:
    """A regular dividend goes ex: no price or divisor change; TR/NTR reinvest it."""
    universe = ctx.universe
    sid = universe.book.ids.get(a.symbol)
    if sid is None:
        return "unknown_symbol"
    if not positive(a.amount):
        return "bad_amount"
    m = universe.members
    records = []
    for r in m.row_of(sid).tolist():
        j = int(m.index[r])
        divisor = ctx.divisor_of(j)
        level = ctx.level(j)
        weight = float(m.qfx[r])
        if not math.isnan(divisor) and math.isfinite(weight):
            gross = a.amount * weight / divisor
            ctx.add_dividend_points(j, gross, gross * (1.0 - float(m.withholding[r])))
        records.append(
            AuditRecord(
                action_id=a.id,
                action="dividend",
                index=ctx.index_id(j),
                symbol=a.symbol,
                effective=effective,
                divisor_before=divisor,
                divisor_after=divisor,
                level_before=level,
                level_after=level,
            )
        )
    return records


@handles(SharesChange)
def shares(ctx: ActionContext, a: SharesChange, effective: int) -> Outcome:
    universe = ctx.universe
    sid = universe.book.ids.get(a.symbol)
    if sid is None:
        return "unknown_symbol"
    if a.shares is None and a.iwf is None and a.awf is None:
        return "bad_params"
    bad = bad_params(a.shares, a.iwf, a.awf)
    if bad:
        return bad
    rows = universe.members.row_of(sid)
    if a.index is not None:
        j = ctx.index_slot(a.index)
        if j is None:
            return "unknown_index"
        rows = rows[universe.members.index[rows] == j]
    if len(rows) == 0:
        return "not_member"

    def change() -> None:
        universe.set_params(rows, a.shares, a.iwf, a.awf)

    indices = universe.members.index[rows].tolist()
    return ctx.adjust(indices, change, "shares", a.id, a.symbol, effective)
