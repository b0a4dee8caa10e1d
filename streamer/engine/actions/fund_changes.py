"""Fund changes: a new basket (portfolio composition) for one fund."""

from __future__ import annotations

from streamer.engine.actions import handles
from streamer.engine.actions.context import ActionContext, Outcome
from streamer.engine.results import AuditRecord
from streamer.errors import ConfigError
from streamer.fund_config import Basket, validate_basket
from streamer.wire import BasketChange


@handles(BasketChange)
def basket(ctx: ActionContext, a: BasketChange, effective: int) -> Outcome:
    composition = Basket(holdings=a.holdings, cash=a.cash, units=a.units)

    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{field}: {problem}")

    try:
        validate_basket(composition, fail)
    except ConfigError:
        return "bad_basket"
    if not ctx.replace_basket(a.fund, composition):
        return "unknown_fund"
    nan = float("nan")
    return [AuditRecord(a.id, "basket", a.fund, "", effective, nan, nan, nan, nan)]
