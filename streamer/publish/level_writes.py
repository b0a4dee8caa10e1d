"""A cycle's level writes, made a column at a time from the engine's :class:`LevelColumns`.

Per series and cycle Python did the work before (a record object, a JSON message and two
RESP commands each): 26 us per series in the service at 10,000 x 2,000, three quarters of its
loop.  Here every number of a column is formatted in one msgspec call, and each kind of
command (the JSON messages, the hash writes, the series channels' PUBLISH, history entries)
for a whole transaction's series comes out of one ``bytes % tuple`` over a format repeated
once per series: C loops, no Python per series.

What is written, per series (``streamer.outputs`` is the schema):
- ``HSET P:index:S`` of the fields that move with every tick (level, ts, ts_ms, source_ts,
  source_ts_ms, seq, change, change_pct): 8 of the 13 fields, ~40% less of Redis's time per
  series.  All 13 are written when a slower field (divisor, prev_close, stale, coverage)
  changed, on a series' first write on a connection (Redis may have restarted, or another
  replica wrote last) and at least every FULL_REFRESH_MS, so the hash is always whole and
  every field current: a reader never sees a mixed state (each transaction is atomic).
- ``PUBLISH P:levels:S`` of its JSON message, for the series whose channel has a subscriber
  (see :class:`ChannelInterest`), and its place in the transaction's ``P:levels`` array.
- ``XADD P:history:S`` when its sampled history is due, and its minute bar.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from streamer.engine import LevelColumns
from streamer.keys import KeyLayout
from streamer.outputs import LEVEL_FIELDS, SCHEMA_VERSION, Bar, bar_row
from streamer.publish.policy import HistoryPolicy
from streamer.redis_pipe import pack

# Series per transaction: ~600 x (HSET, PUBLISH) is 2-3 ms of Redis at most, so a cycle of
# 10,000 series never holds Redis for long.
CHUNK_SERIES = 600
# A series' hash is written whole at least this often, whatever changed (a hash someone
# deleted or edited is whole again within this long).
FULL_REFRESH_MS = 10_000

# The fields that move with every publish, in LEVEL_FIELDS order; the rest change rarely.
DELTA_FIELDS = ("level", "ts", "ts_ms", "source_ts", "source_ts_ms", "seq", "change",
                "change_pct")  # fmt: skip
# Per cycle, one value for every series; the others are formatted per series.
_CONSTANT = ("schema", "ts", "ts_ms")
VARIABLE_FIELDS = tuple(f for f in LEVEL_FIELDS if f not in _CONSTANT)
DELTA_VARIABLE = tuple(f for f in DELTA_FIELDS if f not in _CONSTANT)

_json = msgspec.json.Encoder()
T = TypeVar("T")
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _bulk(text: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text)


def _body_template(fields: Sequence[str]) -> bytes:
    """RESP of ``name value`` pairs as a two-stage format: ``template % (schema, ts, ts_ms)``
    (each a bulk string: the cycle's constants) gives the per-series format, in which every
    other value is ``$%d\r\n%s\r\n`` (its length and text)."""
    parts = []
    for name in fields:
        value = b"%s" if name in _CONSTANT else b"$%%d\r\n%%s\r\n"
        parts.append(_bulk(name.encode()) + value)
    return b"".join(parts)


_FULL_TEMPLATE = _body_template(LEVEL_FIELDS)
_DELTA_TEMPLATE = _body_template(DELTA_FIELDS)
# A series' JSON message (LEVEL_FIELDS order, then "index"): schema, ts and ts_ms first.
_MESSAGE_TEMPLATE = (
    b'{"schema":%s,"level":%%s,"divisor":%%s,"ts":%s,"ts_ms":%s,"source_ts":%%s,'
    b'"source_ts_ms":%%s,"seq":%%s,"prev_close":%%s,"change":%%s,"change_pct":%%s,'
    b'"stale":%%s,"coverage":%%s,"index":"%%s"}'
)
_SCHEMA = b"%d" % SCHEMA_VERSION


def _texts(values: list[Any]) -> list[bytes]:
    """Each value's shortest round-trip JSON text (NaN: ``null``), in one C call."""
    return _json.encode(values)[1:-1].split(b",")


def _redis_texts(texts: list[bytes]) -> list[bytes]:
    """The same as Redis text: unknown (``null``) is ""."""
    if b"null" not in b",".join(texts):
        return texts
    return [b"" if t == b"null" else t for t in texts]


def _pick(items: Sequence[T], positions: Sequence[int]) -> list[T]:
    if not positions:
        return []
    if len(positions) == 1:
        return [items[positions[0]]]
    return list(operator.itemgetter(*positions)(items))


def _changed(now: F64, before: F64) -> npt.NDArray[np.bool_]:
    same: npt.NDArray[np.bool_] = (now == before) | (np.isnan(now) & np.isnan(before))
    return ~same


def _flat(*columns: Sequence[bytes | int]) -> tuple[bytes | int, ...]:
    """Row by row: the first item of every column, then the second, ..."""
    return tuple(chain.from_iterable(zip(*columns, strict=True)))


def _repeat(body: bytes, heads: list[bytes], columns: list[list[bytes]] | list[Any]) -> bytes:
    """``head + body`` once per head, ``body``'s %-fields filled from ``columns``."""
    return (b"%s" + body) * len(heads) % _flat(heads, *columns)


@dataclass(frozen=True, slots=True)
class _Formats:
    """The formats of one cycle (its publish time written in)."""

    message: bytes  # a series' JSON message
    full: bytes  # the 13 pairs of a whole hash
    delta: bytes  # the 8 that move
    history: bytes  # XADD's arguments after the key


class _FieldTexts:
    """A chunk's Redis text per field, and each text's length (RESP says it first)."""

    def __init__(self, texts: dict[str, list[bytes]]) -> None:
        self.texts = texts
        self.sizes = {name: list(map(len, t)) for name, t in texts.items()}

    def pairs(self, fields: Sequence[str], at: list[int]) -> list[list[Any]]:
        """(lengths, texts) column pairs of ``fields`` for the rows ``at``."""
        out: list[list[Any]] = []
        for name in fields:
            out += (_pick(self.sizes[name], at), _pick(self.texts[name], at))
        return out


class ChannelInterest:
    """Which series channels have a subscriber.  Redis does work for every PUBLISH, heard or
    not (0.7 us of EXEC each, a quarter of a series' cost); like a market-data publisher
    that serves interest, a series' own channel is written while someone listens.  The
    writer asks Redis (``PUBSUB CHANNELS P:levels:*`` and ``PUBSUB NUMPAT``) every
    POLL_MS: a new subscriber hears its series from the next poll on (it reads the hash or
    ``P:levels`` for what came before).  Any pattern subscription (PSUBSCRIBE), and every
    Redis Cluster (whose nodes each know only their own subscribers), means every channel."""

    POLL_MS = 250

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix  # b"P:levels:"
        self.everything = True  # until Redis has said otherwise
        self.channels: set[bytes] = set()
        self.version = 0  # +1 per change, for the writes' per-slot copy

    def update(self, channels: Iterable[bytes], patterns: int) -> None:
        everything, subscribed = patterns > 0, set(channels)
        if everything != self.everything or subscribed != self.channels:
            self.everything, self.channels = everything, subscribed
            self.version += 1


class LevelWrites:
    """The per-series state of level publishing, in arrays by slot (a slot per series, given
    on first sight): seq, the slow fields last written, when the hash is next written whole,
    when history is next due, the minute bar being built; and the RESP of a cycle."""

    def __init__(self, keys: KeyLayout, interest: ChannelInterest) -> None:
        self.keys = keys
        self.interest = interest
        self._slots: dict[str, int] = {}
        self.names: list[str] = []
        self._ids: list[bytes] = []
        self._full_heads: list[bytes] = []  # HSET P:index:S with 13 pairs
        self._delta_heads: list[bytes] = []  # ... with the 8 delta pairs
        self._publish_heads: list[bytes] = []  # PUBLISH P:levels:S
        self._history_heads: list[bytes] = []  # XADD P:history:S
        self._bars_keys: list[bytes] = []
        self._capacity = 0
        self.seq: I64 = np.zeros(0, dtype=np.int64)
        # The slow fields as last written whole, and when each slot is next written whole.
        self._divisor: F64 = np.zeros(0)
        self._prev_close: F64 = np.zeros(0)
        self._stale: I64 = np.zeros(0, dtype=np.int64)
        self._coverage: F64 = np.zeros(0)
        self._whole_until: I64 = np.zeros(0, dtype=np.int64)  # ms; 0: next write whole
        self._history_due: I64 = np.zeros(0, dtype=np.int64)  # ms
        # The current minute's bars.
        self._bar_open: F64 = np.zeros(0)
        self._bar_high: F64 = np.zeros(0)
        self._bar_low: F64 = np.zeros(0)
        self._bar_close: F64 = np.zeros(0)
        self._bar_updates: I64 = np.zeros(0, dtype=np.int64)
        self.bars_minute = 0
        self.pending_bars: list[tuple[str, Bar]] = []  # finished, to write
        self._interest_version = -1
        self._wanted: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)

    # -------------------------------------------------------------- slots

    def slots(self, series: Sequence[str]) -> I64:
        found = list(map(self._slots.get, series))
        if None in found:
            found = [
                self._new_slot(s) if k is None else k for s, k in zip(series, found, strict=True)
            ]
        return np.array(found, dtype=np.int64)

    def _new_slot(self, series: str) -> int:
        slot = len(self.names)
        if slot >= self._capacity:
            self._grow(max(64, 2 * self._capacity))
        self._slots[series] = slot
        self.names.append(series)
        layout = self.keys
        key = layout.index(series).encode()
        channel = layout.series_channel(series).encode()
        history = layout.history(series).encode()
        self._ids.append(series.encode())
        self._full_heads.append(b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(LEVEL_FIELDS)) + _bulk(key))
        self._delta_heads.append(
            b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(DELTA_FIELDS)) + _bulk(key)
        )
        self._publish_heads.append(b"*3\r\n$7\r\nPUBLISH\r\n" + _bulk(channel))
        self._history_heads.append(
            b"*%d\r\n$4\r\nXADD\r\n" % (6 + 2 * len(LEVEL_FIELDS)) + _bulk(history)
        )
        self._bars_keys.append(layout.bars(series).encode())
        self._interest_version = -1
        return slot

    def _grow(self, capacity: int) -> None:
        def grown(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            out = np.zeros(capacity, dtype=a.dtype)
            out[: len(a)] = a
            return out

        for name in ("seq", "_divisor", "_prev_close", "_stale", "_coverage", "_whole_until",
                     "_history_due", "_bar_open", "_bar_high", "_bar_low", "_bar_close",
                     "_bar_updates", "_wanted"):  # fmt: skip
            setattr(self, name, grown(getattr(self, name)))
        self._capacity = capacity

    def seq_of(self, series: str) -> int:
        slot = self._slots.get(series)
        return 0 if slot is None else int(self.seq[slot])

    def continue_seq(self, series: str, seq: int) -> None:
        """Continue ``series`` from ``seq`` (what a previous run left in Redis) if higher."""
        slot = int(self.slots([series])[0])
        self.seq[slot] = max(int(self.seq[slot]), seq)

    def connected(self) -> None:
        """A new connection: Redis may have restarted (lost every key) or another replica
        written last; every hash is written whole next, and every history entry is due."""
        self._whole_until[:] = 0
        self._history_due[:] = 0

    # -------------------------------------------------------------- a cycle

    def chunks(
        self, levels: LevelColumns, publish_ns: int, history: HistoryPolicy
    ) -> list[tuple[bytes, int, bytes]]:
        """Per transaction (CHUNK_SERIES series): the RESP of its level commands, how many
        commands that is, and its series' JSON messages joined by commas (the inside of its
        ``P:levels`` array)."""
        n = len(levels)
        if not n:
            return []
        now_ms = publish_ns // 1_000_000
        self.roll_bars(now_ms)
        slots = self.slots(levels.series)
        seq = self.seq[slots] + 1
        self.seq[slots] = seq
        self._add_to_bars(slots, levels.level)
        if self._interest_version != self.interest.version:
            self._refresh_wanted()
        ts, ts_ms = b"%d" % publish_ns, b"%d" % now_ms
        constants = (_bulk(_SCHEMA), _bulk(ts), _bulk(ts_ms))
        full_body = _FULL_TEMPLATE % constants
        cutoff = b"%d" % max(0, now_ms - history.retention_ms)
        formats = _Formats(
            message=_MESSAGE_TEMPLATE % (_SCHEMA, ts, ts_ms),
            full=full_body,
            delta=_DELTA_TEMPLATE % constants[1:],
            history=b"$5\r\nMINID\r\n$1\r\n~\r\n%s$1\r\n*\r\n%s" % (_bulk(cutoff), full_body),
        )
        return [
            self._chunk(levels, slice(lo, lo + CHUNK_SERIES), slots, seq, now_ms, history, formats)
            for lo in range(0, n, CHUNK_SERIES)
        ]

    def _chunk(
        self,
        levels: LevelColumns,
        part: slice,
        all_slots: I64,
        all_seq: I64,
        now_ms: int,
        history: HistoryPolicy,
        formats: _Formats,
    ) -> tuple[bytes, int, bytes]:
        slots = all_slots[part]
        slot_list = slots.tolist()
        divisor, prev_close = levels.divisor[part], levels.prev_close[part]
        stale, coverage = levels.stale[part], levels.coverage[part]
        source_ts = levels.source_ts[part]
        # JSON text of every field that varies by series (NaN: null), in LEVEL_FIELDS order.
        json_texts = {
            "level": _texts(levels.level[part].tolist()),
            "divisor": _texts(divisor.tolist()),
            "source_ts": _texts(source_ts.tolist()),
            "source_ts_ms": _texts((source_ts // 1_000_000).tolist()),
            "seq": _texts(all_seq[part].tolist()),
            "prev_close": _texts(prev_close.tolist()),
            "change": _texts(levels.change[part].tolist()),
            "change_pct": _texts(levels.change_pct[part].tolist()),
            "stale": _texts(stale.tolist()),
            "coverage": _texts(coverage.tolist()),
        }
        ids = _pick(self._ids, slot_list)
        joined = b"\n".join([formats.message] * len(slot_list))
        messages = (joined % _flat(*json_texts.values(), ids)).split(b"\n")
        texts = _FieldTexts({name: _redis_texts(t) for name, t in json_texts.items()})

        parts: list[bytes] = []
        whole = (
            (self._whole_until[slots] <= now_ms)
            | _changed(divisor, self._divisor[slots])
            | _changed(prev_close, self._prev_close[slots])
            | (stale != self._stale[slots])
            | _changed(coverage, self._coverage[slots])
        )
        full_at = np.flatnonzero(whole).tolist()
        if full_at:
            heads = _pick(self._full_heads, _pick(slot_list, full_at))
            parts.append(_repeat(formats.full, heads, texts.pairs(VARIABLE_FIELDS, full_at)))
            written = slots[full_at]
            self._divisor[written] = divisor[full_at]
            self._prev_close[written] = prev_close[full_at]
            self._stale[written] = stale[full_at]
            self._coverage[written] = coverage[full_at]
            self._whole_until[written] = now_ms + FULL_REFRESH_MS
        delta_at = np.flatnonzero(~whole).tolist()
        if delta_at:
            heads = _pick(self._delta_heads, _pick(slot_list, delta_at))
            parts.append(_repeat(formats.delta, heads, texts.pairs(DELTA_VARIABLE, delta_at)))
        heard = np.flatnonzero(self._wanted[slots]).tolist()
        if heard:
            said = _pick(messages, heard)
            heads = _pick(self._publish_heads, _pick(slot_list, heard))
            parts.append(_repeat(b"$%d\r\n%s\r\n", heads, [list(map(len, said)), said]))
        due_at = np.flatnonzero(self._history_due[slots] <= now_ms).tolist()
        if due_at:
            self._history_due[slots[due_at]] = now_ms + history.interval_ms
            heads = _pick(self._history_heads, _pick(slot_list, due_at))
            parts.append(_repeat(formats.history, heads, texts.pairs(VARIABLE_FIELDS, due_at)))
        commands = len(full_at) + len(delta_at) + len(heard) + len(due_at)
        return b"".join(parts), commands, b",".join(messages)

    def _refresh_wanted(self) -> None:
        interest = self.interest
        if interest.everything:
            self._wanted[:] = True
        else:
            self._wanted[:] = False
            prefix = interest.prefix
            for channel in interest.channels:
                slot = self._slots.get(channel[len(prefix) :].decode(errors="replace"))
                if slot is not None:
                    self._wanted[slot] = True
        self._interest_version = interest.version

    # -------------------------------------------------------------- minute bars

    def _add_to_bars(self, slots: I64, level: F64) -> None:
        finite = np.isfinite(level)
        s, v = slots[finite], level[finite]
        first = self._bar_updates[s] == 0
        self._bar_open[s[first]] = v[first]
        self._bar_high[s] = np.where(first, v, np.maximum(self._bar_high[s], v))
        self._bar_low[s] = np.where(first, v, np.minimum(self._bar_low[s], v))
        self._bar_close[s] = v
        self._bar_updates[s] += 1

    def roll_bars(self, now_ms: int) -> None:
        """A new minute: the bars of the last one are finished (written with this cycle)."""
        minute = now_ms - now_ms % 60_000
        if minute != self.bars_minute:
            self.take_bars()
            self.bars_minute = minute

    def take_bars(self) -> None:
        """The current bars are finished: they go out with the next cycle."""
        built = np.flatnonzero(self._bar_updates[: len(self.names)]).tolist()
        for slot in built:
            self.pending_bars.append((self.names[slot], Bar(
                self.bars_minute, float(self._bar_open[slot]), float(self._bar_high[slot]),
                float(self._bar_low[slot]), float(self._bar_close[slot]),
                int(self._bar_updates[slot]),
            )))  # fmt: skip
        self._bar_updates[built] = 0

    def bar_commands(self, retention_ms: int, now_ms: int) -> list[bytes]:
        """XADD of every finished bar, and forget them."""
        cutoff = b"%d" % max(0, now_ms - retention_ms)
        keys, slots = self._bars_keys, self._slots
        commands = [
            pack(b"XADD", keys[slots[series]], b"MINID", b"~", cutoff, b"*", *bar_row(bar))
            for series, bar in self.pending_bars
        ]
        self.pending_bars = []
        return commands
