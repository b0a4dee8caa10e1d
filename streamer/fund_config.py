"""Fund definitions: one TOML file per index fund, its basket (portfolio composition file) a CSV.

A fund holds a basket of securities per creation unit and tracks one published series::

    id = "US500FULL"                    # [A-Za-z0-9._-]{1,64}, not an index series id
    name = "US500 Full Replication UCITS ETF"
    currency = "USD"
    tracks = "US500.NTR"                # a configured series (UCITS funds track net return)
    listing = "US5F"                    # the fund's own exchange symbol, ticks on ticks/
    basket = "us500full_basket.csv"     # symbol,shares[,currency]: shares per creation unit
    cash = 12500.0                      # estimated cash component per creation unit
    units = 50000                       # fund units per creation unit
    shares_outstanding = 20000000       # fund units in issue
    expense_ratio = 0.0007              # per year, accrued per calendar day into the NAV
    inav_interval_ms = 15000            # iNAV every 15 s (classic); 1000; 0: every change

Loading is total like the index definitions': every problem is one ConfigError naming the file,
the field and the problem.  Checks against the indices (tracked series known, listing symbol
not a constituent or holding, one currency per symbol) are :func:`check_funds`'.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from streamer.config import (
    MAX_PUBLISH_INTERVAL_MS,
    IndexDefinition,
    check_currency_code,
    check_identity,
    definition_failure,
    explain_validation_error,
    parse_toml_file,
    read_text_file,
    validate_symbol,
)
from streamer.errors import ConfigError

DEFAULT_INAV_INTERVAL_MS = 15_000
_BASKET_COLUMNS = ("symbol", "shares", "currency")


class HoldingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    symbol: str
    shares: float  # per creation unit
    currency: str | None = None  # None: the fund currency


class Basket(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A portfolio composition: holdings and cash per creation unit, units per creation unit."""

    holdings: tuple[HoldingSpec, ...]
    cash: float = 0.0
    units: float = 1.0


class FundDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str = ""
    currency: str = "USD"
    tracks: str
    listing: str
    basket: Basket
    shares_outstanding: float = 0.0
    expense_ratio: float = 0.0
    inav_interval_ms: int = DEFAULT_INAV_INTERVAL_MS
    source: str = ""  # file the definition came from, for error messages


class _FundFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str = ""
    currency: str = "USD"
    tracks: str
    listing: str
    basket: str | list[HoldingSpec]
    cash: float = 0.0
    units: float = 1.0
    shares_outstanding: float = 0.0
    expense_ratio: float = 0.0
    inav_interval_ms: int = DEFAULT_INAV_INTERVAL_MS
    calendar: str | None = None  # refused: a fund follows its tracked series' calendar


def load_fund(path: Path) -> FundDefinition:
    """One fund definition (TOML) with its basket (a CSV beside it, or inline tables)."""
    raw = parse_toml_file(path)
    try:
        parsed = msgspec.convert(raw, _FundFile, str_keys=True)
    except msgspec.ValidationError as exc:
        field, problem = explain_validation_error(exc, _FundFile)
        where = f"field `{field}`: " if field else ""
        raise ConfigError(f"{path}: {where}{problem}") from None
    if parsed.calendar is not None:
        raise ConfigError(
            f"{path}: field `calendar`: a fund closes with the series it tracks; remove it"
        )
    holdings = (
        read_basket_csv(path.parent / parsed.basket)
        if isinstance(parsed.basket, str)
        else tuple(parsed.basket)
    )
    definition = FundDefinition(
        id=parsed.id,
        name=parsed.name,
        currency=parsed.currency,
        tracks=parsed.tracks,
        listing=parsed.listing,
        basket=Basket(holdings=holdings, cash=parsed.cash, units=parsed.units),
        shares_outstanding=parsed.shares_outstanding,
        expense_ratio=parsed.expense_ratio,
        inav_interval_ms=parsed.inav_interval_ms,
        source=str(path),
    )
    validate_fund(definition)
    return definition


def validate_basket(basket: Basket, fail: Any) -> None:
    """Holdings, cash and units of one basket (config file or ``basket`` action)."""
    if not basket.holdings:
        raise fail("basket", "a fund needs at least one holding")
    if not (math.isfinite(basket.cash)):
        raise fail("cash", f"must be a finite number, got {basket.cash}")
    if not (math.isfinite(basket.units) and basket.units > 0):
        raise fail("units", f"must be a positive number, got {basket.units}")
    seen: set[str] = set()
    for h in basket.holdings:
        problem = validate_symbol(h.symbol)
        if problem:
            raise fail("basket.symbol", problem)
        where = f"basket[{h.symbol}]"
        if h.symbol in seen:
            raise fail(where, f"duplicate symbol {h.symbol!r}")
        seen.add(h.symbol)
        if not (math.isfinite(h.shares) and h.shares > 0):
            raise fail(f"{where}.shares", f"must be positive, got {h.shares}")
        if h.currency is not None:
            check_currency_code(h.currency, lambda p, w=where: fail(f"{w}.currency", p))


def validate_fund(d: FundDefinition) -> None:
    """Checks of one fund on its own; raises ConfigError naming the field."""

    fail = definition_failure(d.source, d.id)
    check_identity(d.id, d.name, d.currency, fail)
    listing_problem = validate_symbol(d.listing)
    if listing_problem:
        raise fail("listing", listing_problem)
    validate_basket(d.basket, fail)
    if any(h.symbol == d.listing for h in d.basket.holdings):
        raise fail("listing", f"{d.listing!r} is also a holding of the fund")
    if not (math.isfinite(d.shares_outstanding) and d.shares_outstanding >= 0):
        raise fail("shares_outstanding", f"must be >= 0, got {d.shares_outstanding}")
    if not (math.isfinite(d.expense_ratio) and 0.0 <= d.expense_ratio < 1.0):
        raise fail("expense_ratio", f"must be in [0, 1) per year, got {d.expense_ratio}")
    if not (0 <= d.inav_interval_ms <= MAX_PUBLISH_INTERVAL_MS):
        raise fail(
            "inav_interval_ms",
            f"must be 0 (every change) .. {MAX_PUBLISH_INTERVAL_MS}, got {d.inav_interval_ms}",
        )


def check_funds(funds: Sequence[FundDefinition], indices: Sequence[IndexDefinition]) -> None:
    """Checks of funds against each other and the indices: a known tracked series, ids that
    collide with no series, listings that are nobody's constituent or holding, one currency
    per symbol across indices and funds."""
    if not funds:
        return  # and no pass over every membership (400,000 at 10,000 indices)
    series = {s: d for d in indices for s in d.series_ids()}
    currency: dict[str, tuple[str, str]] = {}
    for d in indices:
        for c in d.constituents:
            currency.setdefault(c.symbol, (c.currency or d.currency, d.source or d.id))
    listings: dict[str, str] = {}
    ids: dict[str, str] = {}
    for f in funds:
        where = f.source or f.id

        def fail(field: str, problem: str, where: str = where) -> ConfigError:
            return ConfigError(f"{where}: field `{field}`: {problem}")

        if f.id in series:
            raise fail("id", f"{f.id!r} is also an index series ({series[f.id].source})")
        if f.id in ids:
            raise fail("id", f"fund {f.id!r} is also defined in {ids[f.id]}")
        ids[f.id] = where
        if f.tracks not in series:
            known = ", ".join(sorted(series)[:5])
            raise fail("tracks", f"unknown series {f.tracks!r} (configured: {known}, ...)")
        if f.listing in currency:
            raise fail(
                "listing",
                f"{f.listing!r} is a constituent in {currency[f.listing][1]}: a listing "
                "symbol must be the fund's own",
            )
        if f.listing in listings:
            raise fail("listing", f"{f.listing!r} is also the listing of {listings[f.listing]}")
        listings[f.listing] = where
        for h in f.basket.holdings:
            code = h.currency or f.currency
            known_currency = currency.setdefault(h.symbol, (code, where))
            if known_currency[0] != code:
                raise fail(
                    f"basket[{h.symbol}].currency",
                    f"{code} here but {known_currency[0]} in {known_currency[1]}",
                )
    for f in funds:
        for h in f.basket.holdings:
            if h.symbol in listings:
                raise ConfigError(
                    f"{f.source or f.id}: field `basket[{h.symbol}]`: {h.symbol!r} is the "
                    f"listing of another fund ({listings[h.symbol]})"
                )


def read_basket_csv(path: Path) -> tuple[HoldingSpec, ...]:
    """A portfolio composition file: header ``symbol,shares[,currency]``, one row a holding."""
    text = read_text_file(path, "basket CSV file")
    try:
        rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].startswith("#")]
    except csv.Error as exc:
        raise ConfigError(f"{path}: malformed CSV: {exc}") from None
    if not rows:
        raise ConfigError(f"{path}: no holdings")
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["symbol", "shares"]:
        raise ConfigError(
            f"{path}: line 1: the header must start with `symbol,shares`, got {rows[0]!r}"
        )
    for h in header:
        if h not in _BASKET_COLUMNS:
            raise ConfigError(
                f"{path}: line 1: unknown column `{h if h.isprintable() else repr(h)}` "
                f"(known: {', '.join(_BASKET_COLUMNS)})"
            )
    out: list[HoldingSpec] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            raise ConfigError(f"{path}: line {lineno}: {len(row)} fields, header has {len(header)}")
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=False):
            cell = cell.strip()
            if cell == "":
                continue
            if name == "shares":
                try:
                    record[name] = float(cell)
                except ValueError:
                    raise ConfigError(
                        f"{path}: line {lineno}: field `shares`: {cell!r} is not a number"
                    ) from None
            else:
                record[name] = cell
        try:
            out.append(msgspec.convert(record, HoldingSpec))
        except msgspec.ValidationError as exc:
            field, problem = explain_validation_error(exc, HoldingSpec)
            where = f"field `{field}`: " if field else ""
            raise ConfigError(f"{path}: line {lineno}: {where}{problem}") from None
    return tuple(out)
