"""The engine's state as a typed, versioned document, and its restore against a config.

A snapshot has two parts, so that a checkpoint rewrites the large one only when it changed:

- :class:`Structure`: symbols, membership (parameters and weights), per-index divisors and
  total-return bases, applied and pending actions, where each calendar stands.  It changes
  with corporate actions, index changes and closes.
- :class:`Market`: per-symbol market data (prices, ts, seq, held prices, floors, freshness),
  FX rates and reference levels.  It changes with every tick.

Each part names the structure revision it belongs to; a reader refuses parts that do not match
(the store writes both atomically, so that can only be damage).  Arrays travel as raw
little-endian bytes (``ndarray.tobytes``): a 200,000-entry membership encodes in milliseconds.

Restoring reconciles the stored state with the config, never silently mixing them:
- an index in both, with the same definition, continues from the stored state;
- an index only in the config starts fresh from it;
- an index only in the stored state is dropped (reported);
- an index whose definition changed (method, currency, divisor or base value, constituents
  and their parameters) is refused, unless the operator asked to reset it;
- an unknown format version is refused.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt

from streamer.config import IndexDefinition
from streamer.engine.arrays import column
from streamer.engine.funds import FundHistory, FundState
from streamer.engine.returns import ReturnsBook
from streamer.engine.schedule import Agenda, Cursor, SessionRules
from streamer.engine.state import EngineState
from streamer.engine.universe import MARKET_COLUMNS, MEMBER_COLUMNS, Universe
from streamer.engine.weighting import WEIGHTINGS
from streamer.errors import StateError
from streamer.fund_config import Basket, FundDefinition
from streamer.wire import Action

FORMAT_VERSION = 1
# Symbols are printable (validated at load), so a control character can join them: one
# string per index encodes far faster than a list of hundreds.
SYMBOL_SEPARATOR = "\x1f"

_FLOAT_MEMBER_COLUMNS = ("shares", "iwf", "awf", "withholding", "q")


class IndexRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    fingerprint: str  # of the definition this state was built from
    method: str
    currency: str
    symbols: str  # the definition's constituents (not today's members), SYMBOL_SEPARATOR-joined
    divisor: float
    pr_close: float
    tr_close: float
    ntr_close: float
    gross_points: float
    net_points: float


class PendingAction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    effective: int
    action: Action


class CalendarRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    last_closed: str | None  # ISO date of the last close taken
    last_close_ns: int | None


class FundRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fund's durable part: its current basket, fee accrued, intraday base and every
    official NAV it has struck (with the tracked series' close of the same session)."""

    id: str
    basket: Basket
    fee_factor: float
    nav_base: float
    index_base: float
    sessions: list[str]
    navs: list[float]
    index_closes: list[float]


class Structure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    revision: int
    symbols: list[str]
    currencies: list[str]
    members: dict[str, bytes]  # sid, index (position in ``indices``) and parameters
    indices: list[IndexRecord]
    applied: dict[str, int]  # action id -> effective
    pending: list[PendingAction]
    calendars: list[CalendarRecord]
    funds: list[FundRecord] = []  # absent in states written before funds existed


class Market(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    revision: int  # of the structure these columns belong to
    columns: dict[str, bytes]  # per-symbol market data, one entry per symbol of the structure
    fx_rates: dict[str, float]
    fx_ts: dict[str, int]
    references: dict[str, tuple[float, int]]


class Snapshot(msgspec.Struct, frozen=True):
    structure: Structure
    market: Market


@dataclass
class Reconciliation:
    """What a restore did with each index of the stored state and of the config."""

    kept: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # in the config only (or reset)
    dropped: list[str] = field(default_factory=list)  # in the stored state only
    reset: list[str] = field(default_factory=list)


def fingerprint(d: IndexDefinition) -> str:
    """A digest of what defines an index's state: method, currency, divisor or base value and
    the constituents with their parameters (not seed prices, names or variants)."""
    constituents = sorted(
        (c.symbol, c.shares, c.iwf, c.awf, c.currency or d.currency, c.withholding)
        for c in d.constituents
    )
    canonical = msgspec.msgpack.encode(
        [d.method, d.currency, d.divisor, d.base_value, constituents]
    )
    return hashlib.sha256(canonical).hexdigest()[:32]


def _bytes(array: npt.NDArray[np.generic]) -> bytes:
    """Raw little-endian bytes (one copy: ``tobytes``)."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


@dataclass(frozen=True, slots=True)
class Identity:
    """What a snapshot records of a definition; definitions do not change while the engine
    runs, so this is computed once (the fingerprints of 2,000 indices take 40 ms)."""

    id: str
    fingerprint: str
    method: str
    currency: str
    symbols: str


def identities(definitions: Sequence[IndexDefinition]) -> list[Identity]:
    return [
        Identity(
            d.id,
            fingerprint(d),
            d.method,
            d.currency,
            SYMBOL_SEPARATOR.join(sorted(c.symbol for c in d.constituents)),
        )
        for d in definitions
    ]


def take(state: EngineState, definitions: Sequence[IndexDefinition]) -> Snapshot:
    """The snapshot of a state built from ``definitions`` (in the engine's index order)."""
    return Snapshot(structure(state, identities(definitions)), market(state))


def structure(state: EngineState, identity: Sequence[Identity]) -> Structure:
    universe = state.universe
    members = universe.member_columns()
    returns = state.returns
    indices = [
        IndexRecord(
            id=d.id,
            fingerprint=d.fingerprint,
            method=d.method,
            currency=d.currency,
            symbols=d.symbols,
            divisor=float(state.divisor[j]),
            pr_close=float(returns.pr_close[j]),
            tr_close=float(returns.tr_close[j]),
            ntr_close=float(returns.ntr_close[j]),
            gross_points=float(returns.gross_points[j]),
            net_points=float(returns.net_points[j]),
        )
        for j, d in enumerate(identity)
    ]
    return Structure(
        format=FORMAT_VERSION,
        revision=state.revision,
        symbols=list(universe.book.names),
        currencies=list(universe.book.currency),
        members={name: _bytes(values) for name, values in members.items()},
        indices=indices,
        applied=dict(state.applied),
        pending=[PendingAction(e, a) for e, a in state.agenda.pending_actions()],
        calendars=[
            CalendarRecord(name, c.last_closed, c.last_close_ns)
            for name, c in state.cursors.items()
        ],
        funds=_fund_records(state.funds),
    )


def _fund_records(funds: FundState | None) -> list[FundRecord]:
    if funds is None:
        return []
    return [
        FundRecord(
            id=fund_id,
            basket=funds.baskets[f],
            fee_factor=float(funds.fee_factor[f]),
            nav_base=float(funds.nav_base[f]),
            index_base=float(funds.index_base[f]),
            sessions=list(funds.history[f].sessions),
            navs=list(funds.history[f].navs),
            index_closes=list(funds.history[f].index_closes),
        )
        for f, fund_id in enumerate(funds.ids)
    ]


def restore_funds(records: Sequence[FundRecord], funds: Sequence[FundDefinition]) -> FundState:
    """The funds' state for the configured ``funds``: a stored fund continues (its basket
    is the last one applied, from the config or a ``basket`` action; its NAV history goes
    on); a fund only in the config starts fresh; one only in the stored state is dropped."""
    stored = {r.id: r for r in records}
    n = len(funds)
    state = FundState(
        ids=[d.id for d in funds],
        baskets=[d.basket for d in funds],
        fee_factor=np.ones(n),
        nav_base=np.full(n, np.nan),
        index_base=np.full(n, np.nan),
        history=[FundHistory() for _ in funds],
    )
    for f, d in enumerate(funds):
        record = stored.get(d.id)
        if record is None:
            continue
        state.baskets[f] = record.basket
        state.fee_factor[f] = record.fee_factor
        state.nav_base[f] = record.nav_base
        state.index_base[f] = record.index_base
        state.history[f] = FundHistory(
            list(record.sessions), list(record.navs), list(record.index_closes)
        )
    return state


def market(state: EngineState) -> Market:
    universe = state.universe
    return Market(
        format=FORMAT_VERSION,
        revision=state.revision,
        columns={k: _bytes(v) for k, v in universe.book.market_columns().items()},
        fx_rates=dict(universe.fx.rates),
        fx_ts=dict(universe.fx.rate_ts),
        references=dict(state.references),
    )


def restore(
    snapshot: Snapshot,
    definitions: Sequence[IndexDefinition],
    *,
    sessions: SessionRules | None = None,
    reset: Collection[str] = (),
    start_ns: int = 0,
    funds: Sequence[FundDefinition] = (),
    identities: Sequence[Identity] | None = None,
) -> tuple[EngineState, Reconciliation]:
    """The state to run ``definitions`` with, from a snapshot taken under an earlier config.
    ``identities``: theirs, when the caller has them (the checkpointer needs them too).

    Raises :class:`StateError` (one line) for an unknown format, parts that do not belong
    together, or an index whose definition changed and that is not in ``reset``.
    """
    s, m = snapshot.structure, snapshot.market
    if s.format != FORMAT_VERSION or m.format != FORMAT_VERSION:
        raise StateError(
            f"stored state has format {s.format}/{m.format}, this version reads "
            f"{FORMAT_VERSION}; run `streamer state reset` to start afresh"
        )
    if m.revision != s.revision:
        raise StateError(
            f"stored state is inconsistent (structure revision {s.revision}, market data "
            f"revision {m.revision}); run `streamer state reset` to start afresh"
        )
    stored = {record.id: (k, record) for k, record in enumerate(s.indices)}
    report = Reconciliation()
    problems = []
    kept: dict[int, int] = {}  # new index slot -> stored position
    fingerprints = [i.fingerprint for i in identities] if identities is not None else None
    for j, d in enumerate(definitions):
        if d.id not in stored:
            report.fresh.append(d.id)
            continue
        position, record = stored[d.id]
        if d.id in reset:
            report.reset.append(d.id)
            report.fresh.append(d.id)
            continue
        if record.fingerprint != (fingerprints[j] if fingerprints is not None else fingerprint(d)):
            problems.append(_difference(record, d))
            continue
        kept[j] = position
        report.kept.append(d.id)
    if problems:
        raise StateError("; ".join(problems))
    configured = {d.id for d in definitions}
    report.dropped = [record.id for record in s.indices if record.id not in configured]

    # Symbols: every stored one (its prices matter if it is added again), then the config's.
    names, currencies = list(s.symbols), list(s.currencies)
    position_of = {name: k for k, name in enumerate(names)}
    columns = {
        name: column(m.columns[name], np.float64 if isinstance(fill, float) else np.int64)
        for name, fill in MARKET_COLUMNS.items()
    }
    grown: dict[str, list[float | int]] = {name: [] for name in MARKET_COLUMNS}
    stored_symbols = len(names)
    seeded: list[int] = []  # stored symbols the config gives a seed price, and the prices
    seeds: list[float] = []
    # A kept index's symbols and their currencies are in its fingerprint, so in the stored
    # state already: it is looked at only for seed prices, if a stored symbol has none.
    unpriced_stored = bool(np.isnan(columns["price"]).any())
    for j, d in enumerate(definitions):
        if j in kept and not unpriced_stored:
            continue
        for c in d.constituents:
            currency = c.currency or d.currency
            k = position_of.get(c.symbol)
            if k is None:
                position_of[c.symbol] = len(names)
                names.append(c.symbol)
                currencies.append(currency)
                for name, fill in MARKET_COLUMNS.items():
                    grown[name].append(fill)
                grown["fresh_ns"][-1] = start_ns
                if c.price is not None:
                    grown["price"][-1] = c.price
            elif currencies[k] != currency:
                raise StateError(
                    f"symbol {c.symbol}: currency {currencies[k]} in the stored state but "
                    f"{currency} in {d.source or d.id}; run `streamer state reset` to start "
                    "afresh"
                )
            elif c.price is not None and k < stored_symbols:
                seeded.append(k)
                seeds.append(c.price)
    if seeded:
        # A stored symbol never priced takes the config's seed price (the first given).
        ks, first = np.unique(np.array(seeded, dtype=np.int64), return_index=True)
        unpriced = np.isnan(columns["price"][ks])
        columns["price"][ks[unpriced]] = np.array(seeds)[first[unpriced]]
        columns["fresh_ns"][ks[unpriced]] = start_ns
    for name, values in grown.items():
        if values:
            columns[name] = np.concatenate([columns[name], np.array(values, columns[name].dtype)])

    # Membership: stored entries of kept indices, the config's for the fresh ones.
    stored_members = {
        name: column(s.members[name], np.float64 if name in _FLOAT_MEMBER_COLUMNS else np.int64)
        for name in MEMBER_COLUMNS
        if name != "fx_slot"
    }
    slot_of_position = np.full(len(s.indices), -1, dtype=np.int64)
    for j, position in kept.items():
        slot_of_position[position] = j
    mapped = slot_of_position[stored_members["index"]] if len(s.indices) else np.zeros(0, int)
    keep = mapped >= 0
    parts: dict[str, list[npt.NDArray[np.generic]]] = {
        name: [values[keep]] for name, values in stored_members.items()
    }
    parts["index"] = [mapped[keep]]
    for j, d in enumerate(definitions):
        if j in kept:
            continue
        weighting = WEIGHTINGS[d.method]
        specs = d.constituents
        shares = np.array([c.shares for c in specs], dtype=np.float64)
        iwf = np.array([c.iwf for c in specs], dtype=np.float64)
        awf = np.array([c.awf for c in specs], dtype=np.float64)
        parts["sid"].append(np.array([position_of[c.symbol] for c in specs], dtype=np.int64))
        parts["index"].append(np.full(len(specs), j, dtype=np.int64))
        parts["shares"].append(shares)
        parts["iwf"].append(iwf)
        parts["awf"].append(awf)
        parts["withholding"].append(np.array([c.withholding for c in specs], dtype=np.float64))
        parts["q"].append(weighting.q(shares, iwf, awf))
    member_columns = {name: np.concatenate(values) for name, values in parts.items()}

    universe = Universe(
        [d.currency for d in definitions], [WEIGHTINGS[d.method] for d in definitions]
    )
    configured_series = {series for d in definitions for series in d.series_ids()}
    references = {
        series: value for series, value in m.references.items() if series in configured_series
    }
    universe.load(names, currencies, columns, member_columns, m.fx_rates, m.fx_ts)

    n = len(definitions)
    divisor = np.full(n, np.nan)
    returns = ReturnsBook(n)
    for j, position in kept.items():
        record = s.indices[position]
        divisor[j] = record.divisor
        returns.pr_close[j] = record.pr_close
        returns.tr_close[j] = record.tr_close
        returns.ntr_close[j] = record.ntr_close
        returns.gross_points[j] = record.gross_points
        returns.net_points[j] = record.net_points

    agenda = Agenda()
    for pending in s.pending:
        agenda.push(pending.effective, pending.effective, pending.action)
    cursors: dict[str, Cursor] = {}
    if sessions is not None:
        calendars = {r.name: r for r in s.calendars}
        wanted = {d.calendar or sessions.default_calendar for d in definitions}
        for name in sorted(wanted):
            where = calendars.get(name)
            if where is not None:
                cursor = Cursor(name, sessions.source, where.last_closed, where.last_close_ns)
                cursor.start(start_ns)
                cursors[name] = cursor

    state = EngineState(
        universe=universe,
        divisor=divisor,
        returns=returns,
        agenda=agenda,
        applied=dict(s.applied),
        references=references,
        cursors=cursors,
        revision=s.revision + 1,
        funds=restore_funds(s.funds, funds) if funds else None,
    )
    return state, report


def _difference(record: IndexRecord, d: IndexDefinition) -> str:
    """One line naming the index and how its definition changed."""
    what = []
    if record.method != d.method:
        what.append(f"method {record.method} -> {d.method}")
    if record.currency != d.currency:
        what.append(f"currency {record.currency} -> {d.currency}")
    before = set(record.symbols.split(SYMBOL_SEPARATOR))
    after = {c.symbol for c in d.constituents}
    added, removed = sorted(after - before), sorted(before - after)
    if added or removed:
        listed = [f"+{s}" for s in added[:5]] + [f"-{s}" for s in removed[:5]]
        more = len(added) + len(removed) - len(listed)
        what.append("constituents " + " ".join(listed) + (f" (+{more} more)" if more else ""))
    if not what:
        what.append("divisor, base value or constituent parameters")
    return (
        f"index {d.id}: its definition changed since the state was stored ({'; '.join(what)}); "
        f"to start it afresh run `streamer state reset --index {d.id}` "
        f"or `streamer run --reset-index {d.id}`"
    )


_structure_decoder = msgspec.msgpack.Decoder(Structure)
_market_decoder = msgspec.msgpack.Decoder(Market)
_encoder = msgspec.msgpack.Encoder()


def encode_part(part: Structure | Market) -> bytes:
    return _encoder.encode(part)


def decode_parts(structure_blob: bytes, market_blob: bytes) -> Snapshot:
    """The snapshot stored as two MessagePack documents; StateError if they are damaged."""
    try:
        return Snapshot(
            _structure_decoder.decode(structure_blob), _market_decoder.decode(market_blob)
        )
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StateError(
            f"stored state cannot be read ({exc}); run `streamer state reset` to start afresh"
        ) from None
