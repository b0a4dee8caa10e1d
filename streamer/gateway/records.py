"""What the gateway reads from Redis, parsed defensively (schema 2, ``streamer.outputs``).

Anything that does not parse (another program's garbage on our channel, a hash written by
hand) is skipped and counted by the caller, never raised: one bad record must not stop the
stream of every client.  Level messages are forwarded to clients as the very bytes the
service published (no re-encoding on the hot path); only their ``index``, ``seq`` and ``ts``
are decoded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from streamer.fund_outputs import FUND_KIND
from streamer.outputs import SeriesEntry

# Hash fields by type; "" is an unknown value (null in JSON).
_INTEGER_FIELDS = ("schema", "ts", "ts_ms", "source_ts", "source_ts_ms", "seq", "stale")
_OPTIONAL_NUMBER_FIELDS = ("level", "divisor", "prev_close", "change", "change_pct", "coverage")
_BAR_NUMBER_FIELDS = ("o", "h", "l", "c")
_BAR_INTEGER_FIELDS = ("schema", "t", "n")


class LevelUpdate:
    """One series' published level: what the hub caches and clients are sent."""

    __slots__ = ("raw", "seq", "series", "ts")

    def __init__(self, series: str, seq: int, ts: int, raw: bytes) -> None:
        self.series = series
        self.seq = seq
        self.ts = ts  # publish time, UTC ns: the lag of a delivery is measured from it
        self.raw = raw  # the JSON object, as published

    def is_newer_than(self, other: LevelUpdate) -> bool:
        """A later publish: a higher seq, or a later publish time (a series reset with
        ``--reset-index`` starts its seq again)."""
        return self.seq > other.seq or self.ts > other.ts


class _Head(msgspec.Struct):
    seq: int
    ts: int
    index: str = ""
    kind: str = ""  # "fund" for a fund's object (no "index"): not a series the gateway serves


class _Kind(msgspec.Struct):
    kind: str = ""


class LevelMessage(msgspec.Struct):
    """A level message built from a hash, in the published field order."""

    schema: int
    level: float | None
    divisor: float | None
    ts: int
    ts_ms: int
    source_ts: int
    source_ts_ms: int
    seq: int
    prev_close: float | None
    change: float | None
    change_pct: float | None
    stale: int
    coverage: float | None
    index: str


_elements = msgspec.json.Decoder(list[msgspec.Raw])
_head = msgspec.json.Decoder(_Head)
_entry = msgspec.json.Decoder(SeriesEntry)
_kind = msgspec.json.Decoder(_Kind)
# What parse_directory_entry returns for a fund's entry: recognised, not served (the caller
# skips it without counting it as bad).
FUND_ENTRY = SeriesEntry(
    schema=0, id="", kind=FUND_KIND, index="", variant="", name="", currency="", method="",
    constituents=0, calendar="", shard="", keys={},
)  # fmt: skip
_encoder = msgspec.json.Encoder()


def parse_levels_payload(payload: bytes) -> tuple[list[LevelUpdate], int]:
    """The levels of one channel message (``P:levels``: an array; ``P:levels:<id>``: one
    object) and how many of its elements could not be read."""
    try:
        elements = [msgspec.Raw(payload)] if payload[:1] == b"{" else _elements.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return [], 1  # RecursionError: nesting deeper than msgspec follows
    updates: list[LevelUpdate] = []
    bad = 0
    for element in elements:
        try:
            head = _head.decode(element)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            bad += 1
            continue
        if head.kind == FUND_KIND:
            continue  # funds share the channel; the gateway serves index series
        if not head.index:
            bad += 1
            continue
        updates.append(LevelUpdate(head.index, head.seq, head.ts, bytes(element)))
    return updates, bad


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _number(text: str) -> float | None:
    if text == "":
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text}")
    return value


def level_fields(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, object]:
    """A level hash or history entry as typed values (ValueError or KeyError if malformed)."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    values: dict[str, object] = {name: int(text[name]) for name in _INTEGER_FIELDS}
    values.update({name: _number(text.get(name, "")) for name in _OPTIONAL_NUMBER_FIELDS})
    return values


def level_from_hash(
    series: str, fields: Mapping[bytes, bytes] | Mapping[str, str]
) -> LevelUpdate | None:
    """The level message of a ``P:index:<id>`` hash; None if it is empty or malformed."""
    if not fields:
        return None
    try:
        values = level_fields(fields)
        message = msgspec.convert({**values, "index": series}, LevelMessage)
    except (ValueError, KeyError, UnicodeDecodeError, msgspec.ValidationError):
        return None
    return LevelUpdate(series, message.seq, message.ts, _encoder.encode(message))


def bar_fields(fields: Mapping[bytes, bytes]) -> dict[str, object]:
    """A ``P:bars:1m:<id>`` entry as typed values (ValueError or KeyError if malformed)."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    values: dict[str, object] = {name: int(text[name]) for name in _BAR_INTEGER_FIELDS}
    values.update({name: _number(text[name]) for name in _BAR_NUMBER_FIELDS})
    return values


def parse_directory_entry(series: bytes | str, value: bytes) -> SeriesEntry | None:
    """One ``P:series`` field; None if it is not a series entry of a valid id (a fund's
    entry is :data:`FUND_ENTRY`)."""
    try:
        entry = _entry.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            if _kind.decode(value).kind == FUND_KIND:
                return FUND_ENTRY
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        return None
    return entry if entry.id == _text(series) else None
