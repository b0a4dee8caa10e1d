"""What consumers read of the funds: the fund record, the NAV record, the directory entry, and
when each fund's iNAV is disseminated.

- Hash ``P:fund:<id>`` and its history stream ``P:history:<id>`` (fund ids never collide with
  series ids, the config refuses it): :data:`FUND_FIELDS`.
- The same live channels as the indices: ``P:levels:<id>`` (one JSON object) and, batched
  with the index levels of the cycle, ``P:levels`` (a JSON array).  A fund's object carries
  ``"kind": "fund"`` and ``"fund": "<id>"`` and no ``index`` field (the tracked series is
  ``tracks``), so one subscriber sees both and tells them apart: index readers
  (``outputs.parse_levels_message``) skip funds, :func:`parse_fund_messages` takes them.
- Stream ``P:navs:<id>``: one entry per official NAV (:data:`NAV_FIELDS`; ``session`` and
  ``nav`` are what ``streamer tracking --fund`` reads), written once per close time.
- Directory ``P:series``: one entry per fund with ``kind: "fund"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from streamer.engine.funds import FundLevel, NavRecord
from streamer.fund_config import FundDefinition
from streamer.keys import KeyLayout
from streamer.outputs import SCHEMA_VERSION, LevelRecord, redis_row

FUND_KIND = "fund"
FUND_FIELDS = (
    "schema",
    "kind",
    "inav",  # per unit, fund currency
    "listing",  # the listing price used: mid of bid/ask when both came, else the last
    "premium_bps",  # (listing - inav) / inav, bps
    "td_bps",  # intraday tracking difference, bps
    "nav_prev",  # the official NAV the intraday return runs from
    "tracks",  # the tracked series (not "index": channel readers take that for a level)
    "tracks_level",
    "stale",
    "coverage",
    "holdings",
    "ts",
    "ts_ms",
    "source_ts",  # newest listing tick or quote, UTC ns
    "source_ts_ms",
    "seq",
)
NAV_FIELDS = (
    "schema",
    "session",
    "close_ts",
    "nav",
    "basket_nav",
    "fee_factor",
    "tracks",
    "index_close",
    "td_day_bps",
    "td_mtd_bps",
    "td_ytd_bps",
    "td_inception_bps",
    "te_1y_bps",
    "te_3y_bps",
    "observations",
)

_json = msgspec.json.Encoder()


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def fund_fields(level: FundLevel, seq: int, publish_ns: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "kind": FUND_KIND,
        "inav": _number(level.inav),
        "listing": _number(level.listing),
        "premium_bps": _number(level.premium_bps),
        "td_bps": _number(level.td_bps),
        "nav_prev": _number(level.nav_prev),
        "tracks": level.index,
        "tracks_level": _number(level.index_level),
        "stale": level.stale,
        "coverage": level.coverage,
        "holdings": level.holdings,
        "ts": publish_ns,
        "ts_ms": publish_ns // 1_000_000,
        "source_ts": level.source_ts,
        "source_ts_ms": level.source_ts // 1_000_000,
        "seq": seq,
    }


def fund_record(level: FundLevel, seq: int, publish_ns: int) -> tuple[LevelRecord, list[bytes]]:
    """The fund's channel message (as a LevelRecord, so it joins the cycle's ``P:levels``
    array) and its hash/stream fields: name, value, ..."""
    values = fund_fields(level, seq, publish_ns)
    message = _json.encode({**values, "fund": level.fund})
    fields = redis_row(values)
    record = LevelRecord(level.fund, message, [], level.inav, publish_ns // 1_000_000)
    return record, fields


def nav_fields(record: NavRecord) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "session": record.session,
        "close_ts": record.close_ns,
        "nav": record.nav,
        "basket_nav": record.basket_nav,
        "fee_factor": record.fee_factor,
        "tracks": record.index,
        "index_close": record.index_close,
        "td_day_bps": record.td_day_bps,
        "td_mtd_bps": record.td_mtd_bps,
        "td_ytd_bps": record.td_ytd_bps,
        "td_inception_bps": record.td_inception_bps,
        "te_1y_bps": record.te_1y_bps,
        "te_3y_bps": record.te_3y_bps,
        "observations": record.observations,
    }


def nav_row(record: NavRecord) -> list[bytes]:
    return redis_row(nav_fields(record))


def parse_fund_messages(payload: bytes | str) -> list[dict[str, Any]]:
    """The fund objects in one channel message ([] for anything else)."""
    try:
        decoded = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return []
    items = decoded if isinstance(decoded, list) else [decoded]
    return [i for i in items if isinstance(i, dict) and i.get("kind") == FUND_KIND and "fund" in i]


class FundEntry(msgspec.Struct, frozen=True):
    """One fund in the directory ``P:series``."""

    schema: int
    id: str
    kind: str  # "fund"
    name: str
    currency: str
    tracks: str
    listing: str
    holdings: int
    shares_outstanding: float
    expense_ratio: float
    inav_interval_ms: int
    shard: str
    keys: dict[str, str]  # fund (hash), history, navs, channel, series_channel


def fund_directory(
    funds: Sequence[FundDefinition], holdings: Mapping[str, int], keys: KeyLayout
) -> dict[str, bytes]:
    """Directory entries of the funds (``holdings``: per fund, in its current basket)."""
    entries: dict[str, bytes] = {}
    for f in funds:
        entry = FundEntry(
            schema=SCHEMA_VERSION,
            id=f.id,
            kind=FUND_KIND,
            name=f.name or f.id,
            currency=f.currency,
            tracks=f.tracks,
            listing=f.listing,
            holdings=holdings.get(f.id, len(f.basket.holdings)),
            shares_outstanding=f.shares_outstanding,
            expense_ratio=f.expense_ratio,
            inav_interval_ms=f.inav_interval_ms,
            shard=keys.shard or "",
            keys={
                "fund": keys.fund(f.id),
                "history": keys.history(f.id),
                "navs": keys.navs(f.id),
                "channel": keys.levels_channel(),
                "series_channel": keys.series_channel(f.id),
            },
        )
        entries[f.id] = _json.encode(entry)
    return entries


class InavSchedule:
    """When each fund's iNAV goes out: a fund with ``inav_interval_ms = 0`` whenever it
    changed; any other on its own fixed timer (15 s is the classic iNAV dissemination),
    changed or not, as official iNAV feeds do, and never in between."""

    def __init__(self, intervals_ms: Mapping[str, int]) -> None:
        self.every_change = {f for f, ms in intervals_ms.items() if ms == 0}
        self.interval_ns = {f: ms * 1_000_000 for f, ms in intervals_ms.items() if ms > 0}
        self.next_ns: dict[str, int] = {}

    def due(self, changed: Iterable[str], now: int, everything: bool = False) -> list[str]:
        """The funds to publish now (all of them with ``everything``)."""
        out = set(self.interval_ns) | self.every_change if everything else set()
        out.update(f for f in changed if f in self.every_change)
        for fund, interval in self.interval_ns.items():
            due = self.next_ns.get(fund, 0)
            if now >= due or fund in out:
                out.add(fund)
                # Keep the phase: the next slot is the first multiple of the interval ahead.
                self.next_ns[fund] = now - now % interval + interval
        return sorted(out)

    def next_due_ns(self) -> int | None:
        """The earliest timer (None: no fund on a timer)."""
        return min(self.next_ns.values(), default=None) if self.interval_ns else None
