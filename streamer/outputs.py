"""What consumers read, in one place: schema version 2 of every published record.

- Level (hash ``P:index:<id>``, its history stream entries, and the JSON messages on
  ``P:levels:<id>`` and, batched, ``P:levels``): :data:`LEVEL_FIELDS`.  Timestamps come in
  nanoseconds (``ts``, ``source_ts``: exact, for programs) and milliseconds (``ts_ms``,
  ``source_ts_ms``: exact in JavaScript, whose numbers end at 2**53).
- Audit (``P:actions``), close (``P:closes:<id>``), minute bar (``P:bars:1m:<id>``) and
  directory (``P:series``) entries.

``docs/schema.json`` describes all of them as JSON Schema; a test checks it against what
the service really publishes.  A consumer finds every series and its keys in the directory,
so it needs to know no key layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec

from streamer.config import IndexDefinition
from streamer.engine import AuditRecord, SeriesLevel
from streamer.engine.results import CloseRecord
from streamer.keys import KeyLayout

SCHEMA_VERSION = 2
_SCHEMA = b"%d" % SCHEMA_VERSION

LEVEL_FIELDS = (
    "schema",
    "level",
    "divisor",
    "ts",  # publish time, UTC ns
    "ts_ms",  # the same in ms
    "source_ts",  # newest tick used, UTC ns
    "source_ts_ms",
    "seq",  # per-series publish counter
    "prev_close",
    "change",
    "change_pct",
    "stale",
    "coverage",
)

_json = msgspec.json.Encoder()
# The JSON message of one series: the level fields plus "index"; series ids need no JSON
# escaping ([A-Za-z0-9._-], checked when the config is loaded).
_MESSAGE_HEAD = [f'{"{" if k == 0 else ","}"{name}":' for k, name in enumerate(LEVEL_FIELDS)]
_FIELD_NAMES = [name.encode() for name in LEVEL_FIELDS]
# The same message as one format: one C-level formatting per series instead of a join of
# thirteen concatenations.
_MESSAGE_FORMAT = "".join(head + "%s" for head in _MESSAGE_HEAD) + ',"index":"%s"}'


class LevelRecord(msgspec.Struct, gc=False):
    """One series' published level in both forms: its JSON message and its hash/stream
    field values (in LEVEL_FIELDS order, as Redis text)."""

    series: str
    message: bytes
    values: list[bytes]
    level: float
    ts_ms: int


def number_texts(values: list[Any]) -> list[bytes]:
    """Each number's shortest round-trip text (NaN and infinities: ``null``), all in one
    msgspec call: float formatting one value at a time (``repr``) was most of the cost of
    every per-series text the service writes."""
    if not values:
        return []
    return _json.encode(values)[1:-1].split(b",")


def level_record(level: SeriesLevel, seq: int, publish_ns: int) -> LevelRecord:
    """Numbers are msgspec's shortest round-trip text, all in one C call (``repr`` per float
    was most of a publish cycle); an unknown (NaN) value is ``null`` in JSON and "" in
    Redis."""
    ts_ms = publish_ns // 1_000_000
    text = _json.encode(
        (
            SCHEMA_VERSION,
            level.level,
            level.divisor,
            publish_ns,
            ts_ms,
            level.source_ts,
            level.source_ts // 1_000_000,
            seq,
            level.prev_close,
            level.change,
            level.change_pct,
            level.stale,
            level.coverage,
        )
    ).decode()[1:-1]
    message = _MESSAGE_FORMAT % (*text.split(","), level.series)
    if "null" in text:
        text = text.replace("null", "")
    return LevelRecord(
        level.series, message.encode(), text.encode().split(b","), level.level, ts_ms
    )


def level_fields(record: LevelRecord) -> list[bytes]:
    """name, value, name, value, ... of a level, for HSET and XADD."""
    out: list[bytes] = []
    for name, value in zip(_FIELD_NAMES, record.values, strict=True):
        out += (name, value)
    return out


def batch_message(records: Sequence[LevelRecord]) -> bytes:
    """The ``P:levels`` message of one publish: a JSON array of the series' messages."""
    return b"[" + b",".join(r.message for r in records) + b"]"


def parse_levels_message(payload: bytes | str) -> list[dict[str, Any]]:
    """The levels in one channel message (``P:levels``: an array; ``P:levels:<id>``: one
    object); [] for anything that is not a level message."""
    try:
        decoded = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return []
    items = decoded if isinstance(decoded, list) else [decoded]
    return [item for item in items if isinstance(item, dict) and "index" in item]


def redis_text(value: Any) -> bytes:
    """A field value as Redis text: "" for unknown, shortest round trip for floats."""
    if value is None:
        return b""
    if isinstance(value, float):
        return repr(value).encode() if math.isfinite(value) else b""
    return str(value).encode()


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def audit_fields(record: AuditRecord, publish_ns: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "id": record.action_id,
        "action": record.action,
        "index": record.index,
        "symbol": record.symbol,
        "effective": record.effective,
        "divisor_before": _number(record.divisor_before),
        "divisor_after": _number(record.divisor_after),
        "level_before": _number(record.level_before),
        "level_after": _number(record.level_after),
        "ts": publish_ns,
    }


def audit_row(record: AuditRecord, publish_ns: int) -> list[str]:
    """The action's key (written once per action and index), then its ``P:actions``
    fields: name, value, ...  Text, not bytes: Redis's Lua MessagePack reads no bin type."""
    row = [f"{record.action_id}|{record.index}"]
    for name, value in audit_fields(record, publish_ns).items():
        row += (name, redis_text(value).decode())
    return row


def close_fields(record: CloseRecord) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "session": record.session,
        "close_ts": record.close_ns,
        "level": record.level,
        "divisor": record.divisor,
        "pr_close": record.pr_close,
        "tr_close": record.tr_close,
        "ntr_close": record.ntr_close,
        "dividend_points": record.gross_points,
        "net_dividend_points": record.net_points,
    }


def close_row(record: CloseRecord) -> list[bytes]:
    return redis_row(close_fields(record))


def redis_row(fields: dict[str, Any]) -> list[bytes]:
    """name, value, name, value, ... as Redis text (:func:`redis_text`), for HSET and XADD."""
    row: list[bytes] = []
    for name, value in fields.items():
        row += (name.encode(), redis_text(value))
    return row


class Bar(msgspec.Struct, gc=False):
    """Open, high, low and close of one series' published level in one minute."""

    minute_ms: int  # start of the minute, UTC ms
    open: float
    high: float
    low: float
    close: float
    updates: int = 1

    def add(self, level: float) -> None:
        if level > self.high:
            self.high = level
        if level < self.low:
            self.low = level
        self.close = level
        self.updates += 1


def bar_row(bar: Bar) -> list[bytes]:
    return [
        b"schema", _SCHEMA,
        b"t", b"%d" % bar.minute_ms,
        b"o", redis_text(bar.open),
        b"h", redis_text(bar.high),
        b"l", redis_text(bar.low),
        b"c", redis_text(bar.close),
        b"n", b"%d" % bar.updates,
    ]  # fmt: skip


class SeriesEntry(msgspec.Struct, frozen=True):
    """One series in the directory ``P:series`` (field: the series id; value: this, JSON)."""

    schema: int
    id: str
    kind: str  # "index" (the price series) or "variant" (TR, NTR)
    index: str  # the index it belongs to
    variant: str  # "price" | "total" | "net"
    name: str
    currency: str
    method: str
    constituents: int
    calendar: str
    shard: str
    keys: dict[str, str]  # index (hash), history, closes, bars, actions, channel, series_channel


def _series_keys(keys: KeyLayout, series: str) -> dict[str, str]:
    entry = keys.directory_entry(series)
    entry.pop("shard")
    return entry


def directory(
    definitions: Sequence[IndexDefinition],
    members: dict[str, int],
    calendars: Sequence[str],
    keys: KeyLayout,
) -> dict[str, bytes]:
    """The directory ``P:series``: series id -> its :class:`SeriesEntry` as JSON, for every
    variant of every index (``members``: constituents per index; ``calendars``: each
    definition's calendar, "" without sessions)."""
    entries: dict[str, bytes] = {}
    for d, calendar in zip(definitions, calendars, strict=True):
        for series, variant in zip(d.series_ids(), d.variants, strict=True):
            entry = SeriesEntry(
                schema=SCHEMA_VERSION,
                id=series,
                kind="index" if variant == "price" else "variant",
                index=d.id,
                variant=variant,
                name=d.name or d.id,
                currency=d.currency,
                method=d.method,
                constituents=members.get(d.id, 0),
                calendar=calendar,
                shard=keys.shard or "",
                keys=_series_keys(keys, series),
            )
            entries[series] = _json.encode(entry)
    return entries
