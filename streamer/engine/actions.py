"""Corporate actions and index changes.

Each handler validates its action against the current state first (returning a reason code
and changing nothing when it cannot be applied), then describes the change as a closure and
hands it to ``Engine.adjust``, the single divisor adjustment: sums before and after at the
same prices.  Price-adjusting actions also set the symbol's floor time, so a late tick
stamped before the action cannot bring back an unadjusted price.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from streamer.config import KNOWN_CURRENCIES, ConstituentSpec
from streamer.engine.results import AuditRecord
from streamer.wire import (
    Action,
    AddConstituent,
    DeleteConstituent,
    Dividend,
    Rebalance,
    SharesChange,
    SpecialDividend,
    Spinoff,
    Split,
)
from streamer.wire import Rights as RightsIssue

if TYPE_CHECKING:
    from streamer.engine.core import Engine

Outcome = list[AuditRecord] | str


def apply_action(engine: Engine, action: Action, effective: int) -> Outcome:
    """Apply one due action; a list of audit records, or the reason it was rejected."""
    match action:
        case Split():
            return _split(engine, action, effective)
        case SpecialDividend():
            return _special_dividend(engine, action, effective)
        case Dividend():
            return _dividend(engine, action, effective)
        case RightsIssue():
            return _rights(engine, action, effective)
        case Spinoff():
            return _spinoff(engine, action, effective)
        case SharesChange():
            return _shares(engine, action, effective)
        case AddConstituent():
            return _add(engine, action, effective)
        case DeleteConstituent():
            return _delete(engine, action, effective)
        case Rebalance():
            return _rebalance(engine, action, effective)
    return "unknown_action"  # pragma: no cover - the wire union is closed


# ---------------------------------------------------------------------- helpers


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0.0


def _bad_params(
    shares: float | None, iwf: float | None, awf: float | None, withholding: float | None = None
) -> str | None:
    if shares is not None and not _positive(shares):
        return "bad_shares"
    if iwf is not None and not (math.isfinite(iwf) and 0.0 < iwf <= 1.0):
        return "bad_iwf"
    if awf is not None and not _positive(awf):
        return "bad_awf"
    if withholding is not None and not (math.isfinite(withholding) and 0.0 <= withholding < 1.0):
        return "bad_withholding"
    return None


def _rows_of_symbol(engine: Engine, sid: int) -> np.ndarray:
    m = engine.members
    return np.arange(int(m.row_ptr[sid]), int(m.row_ptr[sid + 1]), dtype=np.int64)


def _indices_of_symbol(engine: Engine, sid: int) -> list[int]:
    rows = _rows_of_symbol(engine, sid)
    return [int(j) for j in engine.members.index[rows]]


def _requote_q(engine: Engine, rows: np.ndarray, scale: float = 1.0) -> None:
    """Derive q from the entry parameters again (cap, price); equal q only scales."""
    m = engine.members
    for r in rows.tolist():
        method = engine.methods[int(m.index[r])]
        if method == "cap":
            m.q[r] = m.shares[r] * m.iwf[r] * m.awf[r]
        elif method == "price":
            m.q[r] = m.awf[r]
        else:
            m.q[r] *= scale
    engine._refresh_fx()


def _reprice(engine: Engine, sid: int, adjust: Callable[[float], float], effective: int) -> None:
    book = engine.book
    book.price[sid] = adjust(float(book.price[sid]))
    if not math.isnan(book.held[sid]):
        book.held[sid] = adjust(float(book.held[sid]))
    book.floor_ts[sid] = max(int(book.floor_ts[sid]), effective)
    book.floors_set = True


def _member_value(engine: Engine, rows: np.ndarray) -> np.ndarray:
    """Each entry's value in index currency at current prices (price * fx * q)."""
    m = engine.members
    value: np.ndarray = engine.book.price[m.sid[rows]] * m.qfx[rows]
    return value


# ---------------------------------------------------------------------- symbol events


def _price_event(
    engine: Engine,
    action_id: str,
    kind: str,
    symbol: str,
    effective: int,
    adjust: Callable[[float], float],
    share_scale: float = 1.0,
) -> Outcome:
    """An event that changes a symbol's price (and maybe its share count) everywhere."""
    sid = engine.book.ids.get(symbol)
    if sid is None:
        return "unknown_symbol"

    def change() -> None:
        _reprice(engine, sid, adjust, effective)
        rows = _rows_of_symbol(engine, sid)
        if share_scale != 1.0:
            engine.members.shares[rows] *= share_scale
            _requote_q(engine, rows, share_scale)

    return engine.adjust(
        _indices_of_symbol(engine, sid), change, kind, action_id, symbol, effective
    )


def _priced(engine: Engine, symbol: str) -> float | None:
    sid = engine.book.ids.get(symbol)
    return None if sid is None else float(engine.book.price[sid])


def _split(engine: Engine, a: Split, effective: int) -> Outcome:
    if not _positive(a.ratio):
        return "bad_ratio"
    ratio = a.ratio
    # Cap/equal: price / r and shares * r leave p*q alone; price-weighted: q stays, S drops.
    return _price_event(engine, a.id, "split", a.symbol, effective, lambda p: p / ratio, ratio)


def _special_dividend(engine: Engine, a: SpecialDividend, effective: int) -> Outcome:
    price = _priced(engine, a.symbol)
    if price is None:
        return "unknown_symbol"
    if math.isnan(price):
        return "no_price"
    if not _positive(a.amount) or a.amount >= price:
        return "bad_amount"
    amount = a.amount
    return _price_event(engine, a.id, "special_dividend", a.symbol, effective, lambda p: p - amount)


def _rights(engine: Engine, a: RightsIssue, effective: int) -> Outcome:
    price = _priced(engine, a.symbol)
    if price is None:
        return "unknown_symbol"
    if math.isnan(price):
        return "no_price"
    if not _positive(a.ratio):
        return "bad_ratio"
    if not _positive(a.price):
        return "bad_price"
    ratio, subscription = a.ratio, a.price
    return _price_event(
        engine,
        a.id,
        "rights",
        a.symbol,
        effective,
        lambda p: (p + ratio * subscription) / (1.0 + ratio),
        1.0 + ratio,
    )


def _spinoff(engine: Engine, a: Spinoff, effective: int) -> Outcome:
    price = _priced(engine, a.symbol)
    if price is None:
        return "unknown_symbol"
    if math.isnan(price):
        return "no_price"
    if not _positive(a.ratio) or not _positive(a.price):
        return "bad_ratio"
    value = a.ratio * a.price
    if value >= price:
        return "bad_amount"
    return _price_event(engine, a.id, "spinoff", a.symbol, effective, lambda p: p - value)


def _dividend(engine: Engine, a: Dividend, effective: int) -> Outcome:
    """A regular dividend goes ex: no price or divisor change; TR/NTR reinvest it."""
    sid = engine.book.ids.get(a.symbol)
    if sid is None:
        return "unknown_symbol"
    if not _positive(a.amount):
        return "bad_amount"
    m = engine.members
    records = []
    for r in _rows_of_symbol(engine, sid).tolist():
        j = int(m.index[r])
        divisor = float(engine.divisor[j])
        level = float(engine.sums[j] / divisor) if not math.isnan(divisor) else math.nan
        if not math.isnan(divisor) and math.isfinite(m.qfx[r]):
            gross = a.amount * float(m.qfx[r]) / divisor
            engine.returns.add_dividend(j, gross, gross * (1.0 - float(m.withholding[r])))
            engine._mark_dirty(np.array([j]))
        records.append(
            AuditRecord(
                action_id=a.id,
                action="dividend",
                index=engine.index_ids[j],
                symbol=a.symbol,
                effective=effective,
                divisor_before=divisor,
                divisor_after=divisor,
                level_before=level,
                level_after=level,
            )
        )
    return records


def _shares(engine: Engine, a: SharesChange, effective: int) -> Outcome:
    sid = engine.book.ids.get(a.symbol)
    if sid is None:
        return "unknown_symbol"
    if a.shares is None and a.iwf is None and a.awf is None:
        return "bad_params"
    bad = _bad_params(a.shares, a.iwf, a.awf)
    if bad:
        return bad
    rows = _rows_of_symbol(engine, sid)
    if a.index is not None:
        if a.index not in engine.slot:
            return "unknown_index"
        rows = rows[engine.members.index[rows] == engine.slot[a.index]]
    if len(rows) == 0:
        return "not_member"

    def change() -> None:
        m = engine.members
        if a.shares is not None:
            m.shares[rows] = a.shares
        if a.iwf is not None:
            m.iwf[rows] = a.iwf
        if a.awf is not None:
            m.awf[rows] = a.awf
        _requote_q(engine, rows)

    return engine.adjust(
        engine.members.index[rows].tolist(), change, "shares", a.id, a.symbol, effective
    )


# ---------------------------------------------------------------------- index changes


def _add(engine: Engine, a: AddConstituent, effective: int) -> Outcome:
    j = engine.slot.get(a.index)
    if j is None:
        return "unknown_index"
    bad = _bad_params(a.shares, a.iwf, a.awf, a.withholding)
    if bad:
        return bad
    if a.price is not None and not _positive(a.price):
        return "bad_price"
    if engine.methods[j] == "cap" and a.shares is None:
        return "missing_shares"
    sid = engine.book.ids.get(a.symbol)
    if sid is not None:
        if engine.members.find(sid, j) >= 0:
            return "already_member"
        if a.currency is not None and a.currency != engine.book.currency[sid]:
            return "currency_mismatch"
    elif a.currency is not None and a.currency not in KNOWN_CURRENCIES:
        return "unknown_currency"
    established = not math.isnan(engine.divisor[j])
    if established:
        missing = _unpriced(engine, j, a.symbol, a.currency, a.price)
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

    def change() -> None:
        _insert_members(engine, j, [spec], effective)

    return engine.adjust([j], change, "add", a.id, a.symbol, effective)


def _delete(engine: Engine, a: DeleteConstituent, effective: int) -> Outcome:
    j = engine.slot.get(a.index)
    if j is None:
        return "unknown_index"
    sid = engine.book.ids.get(a.symbol)
    if sid is None:
        return "unknown_symbol"
    if engine.members.find(sid, j) < 0:
        return "not_member"
    if engine.members.count[j] <= 1:
        return "empty_index"

    def change() -> None:
        m = engine.members
        m.remove((m.sid == sid) & (m.index == j))
        engine._rebuild()

    return engine.adjust([j], change, "delete", a.id, a.symbol, effective)


def _rebalance(engine: Engine, a: Rebalance, effective: int) -> Outcome:
    j = engine.slot.get(a.index)
    if j is None:
        return "unknown_index"
    established = not math.isnan(engine.divisor[j])
    specs = list(a.constituents) if a.constituents is not None else None
    if specs is not None:
        if not specs:
            return "empty_index"
        if len({s.symbol for s in specs}) != len(specs):
            return "duplicate_symbol"
        for s in specs:
            bad = _bad_params(s.shares, s.iwf, s.awf, s.withholding)
            if bad:
                return bad
            sid = engine.book.ids.get(s.symbol)
            known_currency = engine.book.currency[sid] if sid is not None else None
            if s.currency is not None and known_currency not in (None, s.currency):
                return "currency_mismatch"
            if s.currency is not None and s.currency not in KNOWN_CURRENCIES:
                return "unknown_currency"
            missing = _unpriced(engine, j, s.symbol, s.currency, s.price)
            if established and missing:
                return missing
    elif engine.methods[j] == "equal" and established and engine.missing[j] > 0:
        return "no_price"

    def change() -> None:
        m = engine.members
        if specs is not None:
            m.remove(m.index == j)
            engine._rebuild()
            _insert_members(engine, j, specs, effective)
        if engine.methods[j] == "equal" and established:
            rows = m.of_index(j)
            # Same total value spread evenly: every member ends with S / N.
            target = float(_member_value_total(engine, j)) / len(rows)
            engine._set_equal_weights(np.array([j], dtype=np.int64), target)
        elif specs is None:
            _requote_q(engine, m.of_index(j))

    return engine.adjust([j], change, "rebalance", a.id, "", effective)


def _unpriced(
    engine: Engine, j: int, symbol: str, currency: str | None, seed: float | None
) -> str | None:
    """Why a new member of established index j could not be valued now, if it could not:
    the divisor adjustment needs its value at current prices (and FX) before it joins."""
    sid = engine.book.ids.get(symbol)
    if (sid is None or math.isnan(engine.book.price[sid])) and seed is None:
        return "no_price"
    source = engine.book.currency[sid] if sid is not None else (currency or engine.currencies[j])
    slot = engine.fx.slot(source, engine.currencies[j])  # may grow the factor array
    if math.isnan(engine.fx.factor[slot]):
        return "no_fx"
    return None


def _member_value_total(engine: Engine, j: int) -> float:
    return float(np.nansum(_member_value(engine, engine.members.of_index(j))))


def _insert_members(engine: Engine, j: int, specs: list[ConstituentSpec], effective: int) -> None:
    """Add constituents to index j: new symbols, seed prices, q by method; rebuild."""
    book = engine.book
    equal_value = None
    if engine.methods[j] == "equal" and not math.isnan(engine.divisor[j]):
        rows = engine.members.of_index(j)
        if len(rows):
            equal_value = _member_value_total(engine, j) / len(rows)
    rows_out: list[tuple[int, int, float, float, float, float, float]] = []
    seeded: list[int] = []
    for s in specs:
        sid = book.ids.get(s.symbol)
        if sid is None:
            sid = book.add(s.symbol, s.currency or engine.currencies[j], engine.clock())
        if math.isnan(book.price[sid]) and s.price is not None:
            book.price[sid] = s.price
            book.source_ts[sid] = effective
            seeded.append(sid)
        rows_out.append(
            (sid, j, s.shares, s.iwf, s.awf, s.withholding, engine._q(j, s.shares, s.iwf, s.awf))
        )
    engine._append_entries(rows_out)
    engine._rebuild()
    if seeded:
        # A seed price is the symbol's first price in every index that holds it.
        engine._first_prices(np.array(seeded, dtype=np.int64))
    if equal_value is not None:
        m = engine.members
        for sid, *_ in rows_out:
            r = m.find(sid, j)
            unit = float(book.price[sid]) * float(engine.fx.factor[m.fx_slot[r]])
            m.q[r] = equal_value / unit
        engine._refresh_fx()
