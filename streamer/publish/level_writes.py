"""A cycle's level writes, made a column at a time from the engine's :class:`LevelColumns`.

Per series and cycle Python did the work before (a record object, a JSON message and two
RESP commands each): 58% of the service's CPU in py-spy at 10,000 x 2,000 and 5,000 ticks/s.
Here every number of a column is formatted in one msgspec call, and each kind of command
(the JSON messages, the hash writes, the series channels' PUBLISH, history entries) comes out
of one ``bytes % tuple`` per FORMAT_BLOCK series over a format repeated once per series: C
loops, no Python per series.  2.6-3.7 us per series for a cycle of 2,000, against 5.4-6.6 us
for the per-series path (side by side in one run).

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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from streamer.engine import LevelColumns
from streamer.keys import KeyLayout
from streamer.outputs import LEVEL_FIELDS, SCHEMA_VERSION, Bar, number_texts
from streamer.publish.policy import HistoryPolicy

# Series per transaction: ~600 x (HSET, PUBLISH) is 2-3 ms of Redis at most, so a cycle of
# 10,000 series never holds Redis for long.
CHUNK_SERIES = 600
# Rows per ``bytes % tuple`` (see _rows).
FORMAT_BLOCK = 64
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
SLOW_FIELDS = ("divisor", "prev_close", "stale", "coverage")

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
# A minute bar's XADD after its key: ``% (cutoff, schema, minute)``, each a bulk string, gives
# the per-bar format (bar_row's fields: o, h, l, c, n each ``$%d\r\n%s\r\n``).
_BAR_TEMPLATE = (
    b"$5\r\nMINID\r\n$1\r\n~\r\n%s$1\r\n*\r\n$6\r\nschema\r\n%s$1\r\nt\r\n%s"
    + b"".join(_bulk(name) + b"$%%d\r\n%%s\r\n" for name in (b"o", b"h", b"l", b"c", b"n"))
)


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


def _rows(row: bytes, columns: Sequence[Sequence[Any]], separator: bytes = b"") -> bytes:
    """``row`` once per row, its %-fields filled from ``columns`` (one per field), joined by
    ``separator``: one ``bytes % tuple`` per FORMAT_BLOCK rows (a format and its arguments
    for 600 rows at once ran 25% slower, out of the CPU's cache)."""
    n = len(columns[0])
    if n <= FORMAT_BLOCK:
        return separator.join([row] * n) % _flat(*columns)
    block = separator.join([row] * FORMAT_BLOCK)
    out = []
    for lo in range(0, n, FORMAT_BLOCK):
        hi = lo + FORMAT_BLOCK
        fmt = block if hi <= n else separator.join([row] * (n - lo))
        out.append(fmt % _flat(*(c[lo:hi] for c in columns)))
    return separator.join(out)


def _repeat(body: bytes, heads: list[bytes], columns: list[list[bytes]] | list[Any]) -> bytes:
    """``head + body`` once per head, ``body``'s %-fields filled from ``columns``."""
    return _rows(b"%s" + body, [heads, *columns])


@dataclass(frozen=True, slots=True)
class _Formats:
    """The formats of one cycle (its publish time written in)."""

    message: bytes  # a series' JSON message
    full: bytes  # the 13 pairs of a whole hash
    delta: bytes  # the 8 that move
    history: bytes  # XADD's arguments after the key


class _FieldTexts:
    """A chunk's Redis text per field; :meth:`pairs` gives each text with its length (RESP
    says it first)."""

    def __init__(self, texts: dict[str, list[bytes]], rows: int) -> None:
        self.texts = texts
        self.rows = rows

    def pairs(self, fields: Sequence[str], at: list[int]) -> list[list[Any]]:
        """(lengths, texts) column pairs of ``fields`` for the rows ``at``."""
        out: list[list[Any]] = []
        every = len(at) == self.rows
        for name in fields:
            texts = self.texts[name] if every else _pick(self.texts[name], at)
            out += (list(map(len, texts)), texts)
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
        # PUBSUB CHANNELS takes a glob: a prefix's own glob characters stand for themselves.
        self.pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"
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
        self._bar_heads: list[bytes] = []  # XADD P:bars:1m:S
        self._capacity = 0
        self.seq: I64 = np.zeros(0, dtype=np.int64)
        # The slow fields as last written whole, and when each slot is next written whole.
        self._divisor: F64 = np.zeros(0)
        self._prev_close: F64 = np.zeros(0)
        self._stale: I64 = np.zeros(0, dtype=np.int64)
        self._coverage: F64 = np.zeros(0)
        self._whole_until: I64 = np.zeros(0, dtype=np.int64)  # ms; 0: next write whole
        self._slow_texts: dict[str, list[bytes]] = {name: [] for name in SLOW_FIELDS}
        self._history_due: I64 = np.zeros(0, dtype=np.int64)  # ms
        # The current minute's bars.
        self._bar_open: F64 = np.zeros(0)
        self._bar_high: F64 = np.zeros(0)
        self._bar_low: F64 = np.zeros(0)
        self._bar_close: F64 = np.zeros(0)
        self._bar_updates: I64 = np.zeros(0, dtype=np.int64)
        self.bars_minute = 0
        self._finished: list[_FinishedBars] = []  # to write
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
        self._bar_heads.append(b"*20\r\n$4\r\nXADD\r\n" + _bulk(layout.bars(series).encode()))
        for texts in self._slow_texts.values():
            texts.append(b"null")  # written whole before it is read (_whole_until is 0)
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
        """A new connection: Redis may have restarted (lost every key); every hash is written
        whole next, and every history entry is due."""
        self.write_whole()
        self._history_due[:] = 0

    def write_whole(self) -> None:
        """Every hash is written whole next (another replica may have written them since:
        its ``stale`` and ``coverage``, read at other moments, may differ from ours)."""
        self._whole_until[:] = 0

    # -------------------------------------------------------------- a cycle

    def chunks(
        self, levels: LevelColumns, publish_ns: int, history: HistoryPolicy
    ) -> list[tuple[bytes, int, bytes]]:
        """Per transaction (CHUNK_SERIES series): the RESP of its level commands, how many
        commands that is, and its series' JSON messages joined by commas (the inside of its
        ``P:levels`` array)."""
        now_ms = publish_ns // 1_000_000
        # Every cycle, with levels or not (a checkpoint's): a quiet series' bar is finished
        # when its minute is over, not when it next moves.
        self.roll_bars(now_ms)
        n = len(levels)
        if not n:
            return []
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
        m = len(slot_list)
        divisor, prev_close = levels.divisor[part], levels.prev_close[part]
        stale, coverage = levels.stale[part], levels.coverage[part]
        whole = (
            (self._whole_until[slots] <= now_ms)
            | _changed(divisor, self._divisor[slots])
            | _changed(prev_close, self._prev_close[slots])
            | (stale != self._stale[slots])
            | _changed(coverage, self._coverage[slots])
        )
        full_at = np.flatnonzero(whole).tolist()
        if full_at:
            self._remember_slow(slots, full_at, divisor, prev_close, stale, coverage, now_ms)
        source_ts = levels.source_ts[part]
        # JSON text of every field that varies by series (NaN: null), in VARIABLE_FIELDS
        # order; the slow fields' as last formatted (float formatting is most of this).
        slow_texts = self._slow_texts
        json_texts = {
            "level": number_texts(levels.level[part].tolist()),
            "divisor": _pick(slow_texts["divisor"], slot_list),
            "source_ts": number_texts(source_ts.tolist()),
            "source_ts_ms": number_texts((source_ts // 1_000_000).tolist()),
            "seq": number_texts(all_seq[part].tolist()),
            "prev_close": _pick(slow_texts["prev_close"], slot_list),
            "change": number_texts(levels.change[part].tolist()),
            "change_pct": number_texts(levels.change_pct[part].tolist()),
            "stale": _pick(slow_texts["stale"], slot_list),
            "coverage": _pick(slow_texts["coverage"], slot_list),
        }
        columns = [*json_texts.values(), _pick(self._ids, slot_list)]
        heard = np.flatnonzero(self._wanted[slots]).tolist()
        if heard:  # the messages one by one, for the series channels
            messages = _rows(formats.message, columns, b"\n").split(b"\n")
            joined = b",".join(messages)
        else:
            joined = _rows(formats.message, columns, b",")
        texts = _FieldTexts({name: _redis_texts(t) for name, t in json_texts.items()}, m)

        parts: list[bytes] = []
        if full_at:
            heads = _pick(self._full_heads, _pick(slot_list, full_at))
            parts.append(_repeat(formats.full, heads, texts.pairs(VARIABLE_FIELDS, full_at)))
        delta_at = np.flatnonzero(~whole).tolist()
        if delta_at:
            heads = _pick(self._delta_heads, _pick(slot_list, delta_at))
            parts.append(_repeat(formats.delta, heads, texts.pairs(DELTA_VARIABLE, delta_at)))
        if heard:
            said = messages if len(heard) == m else _pick(messages, heard)
            heads = _pick(self._publish_heads, _pick(slot_list, heard))
            parts.append(_repeat(b"$%d\r\n%s\r\n", heads, [list(map(len, said)), said]))
        due_at = np.flatnonzero(self._history_due[slots] <= now_ms).tolist()
        if due_at:
            self._history_due[slots[due_at]] = now_ms + history.interval_ms
            heads = _pick(self._history_heads, _pick(slot_list, due_at))
            parts.append(_repeat(formats.history, heads, texts.pairs(VARIABLE_FIELDS, due_at)))
        commands = len(full_at) + len(delta_at) + len(heard) + len(due_at)
        return b"".join(parts), commands, joined

    def _remember_slow(
        self,
        slots: I64,
        at: list[int],
        divisor: F64,
        prev_close: F64,
        stale: I64,
        coverage: F64,
        now_ms: int,
    ) -> None:
        """The slow fields of the rows ``at`` are written whole now: keep their values (to
        see them change) and their text (reused until they do)."""
        written = slots[at]
        self._whole_until[written] = now_ms + FULL_REFRESH_MS
        for name, column, last in (
            ("divisor", divisor, self._divisor),
            ("prev_close", prev_close, self._prev_close),
            ("stale", stale, self._stale),
            ("coverage", coverage, self._coverage),
        ):
            values = column[at]
            last[written] = values
            cache = self._slow_texts[name]
            for slot, text in zip(written.tolist(), number_texts(values.tolist()), strict=True):
                cache[slot] = text

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
        built = np.flatnonzero(self._bar_updates[: len(self.names)])
        if not len(built):
            return
        self._finished.append(
            _FinishedBars(
                self.bars_minute,
                built,
                self._bar_open[built],
                self._bar_high[built],
                self._bar_low[built],
                self._bar_close[built],
                self._bar_updates[built],
            )
        )
        self._bar_updates[built] = 0

    @property
    def pending_bars(self) -> list[tuple[str, Bar]]:
        """The finished bars not yet written, one by one."""
        return [
            (self.names[slot], Bar(done.minute_ms, *values))
            for done in self._finished
            for slot, *values in zip(
                done.slots.tolist(), done.open.tolist(), done.high.tolist(),
                done.low.tolist(), done.close.tolist(), done.updates.tolist(), strict=True,
            )
        ]  # fmt: skip

    def bar_commands(self, retention_ms: int, now_ms: int) -> list[tuple[bytes, int]]:
        """XADD of every finished bar (``streamer.outputs.bar_row``), CHUNK_SERIES a request
        with its command count, and forget them: at a minute's end every series has one, and
        one by one they held the event loop for 100-190 ms at 10,000 series."""
        cutoff = _bulk(b"%d" % max(0, now_ms - retention_ms))
        out = []
        for done in self._finished:
            body = _BAR_TEMPLATE % (cutoff, _bulk(_SCHEMA), _bulk(b"%d" % done.minute_ms))
            for lo in range(0, len(done.slots), CHUNK_SERIES):
                part = slice(lo, lo + CHUNK_SERIES)
                heads = _pick(self._bar_heads, done.slots[part].tolist())
                columns: list[list[Any]] = []
                for values in (done.open[part], done.high[part], done.low[part],
                               done.close[part], done.updates[part]):  # fmt: skip
                    texts = _redis_texts(number_texts(values.tolist()))
                    columns += (list(map(len, texts)), texts)
                out.append((_repeat(body, heads, columns), len(heads)))
        self._finished = []
        return out


@dataclass(frozen=True, slots=True)
class _FinishedBars:
    """One minute's finished bars, a column per field."""

    minute_ms: int
    slots: I64
    open: F64
    high: F64
    low: F64
    close: F64
    updates: I64
