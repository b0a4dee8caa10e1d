"""The bulk level writes against the one-series-at-a-time reference (``level_record``).

A model Redis applies the commands a cycle makes (HSET, PUBLISH, XADD); after every cycle
each series' hash must be exactly the 13 fields of its newest level, its channel message and
its place in ``P:levels`` exactly ``level_record``'s message, whatever mix of whole and delta
writes, unknown (NaN) values and channel interest the cycles had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import hiredis
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.engine.results import LevelColumns, SeriesLevel
from streamer.keys import KeyLayout
from streamer.outputs import LEVEL_FIELDS, bar_row, level_fields, level_record
from streamer.publish.level_writes import (
    CHUNK_SERIES,
    DELTA_FIELDS,
    FULL_REFRESH_MS,
    ChannelInterest,
    LevelWrites,
)
from streamer.publish.policy import HistoryPolicy

LAYOUT = KeyLayout("p")
POLICY = HistoryPolicy(interval_ms=1000)
T0 = 1_764_700_000_000_000_000


class ModelRedis:
    def __init__(self) -> None:
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}
        self.published: list[tuple[bytes, bytes]] = []
        self.streams: dict[bytes, list[list[bytes]]] = {}
        self.hset_sizes: list[int] = []

    def run(self, commands: bytes, count: int) -> None:
        reader = hiredis.Reader()
        reader.feed(commands)
        seen = 0
        while (command := reader.gets()) is not False:
            seen += 1
            name, key, *args = command
            if name == b"HSET":
                self.hset_sizes.append(len(args) // 2)
                self.hashes.setdefault(key, {}).update(zip(args[::2], args[1::2], strict=True))
            elif name == b"PUBLISH":
                self.published.append((key, args[0]))
            elif name == b"XADD":
                assert args[:2] == [b"MINID", b"~"] and args[3] == b"*"
                self.streams.setdefault(key, []).append(args[4:])
            else:
                raise AssertionError(f"unexpected {name!r}")
        assert seen == count


def level(series: str, value: float, prev_close: float, divisor: float, stale: int,
          source_ts: int) -> SeriesLevel:  # fmt: skip
    change = value - prev_close
    change_pct = (value / prev_close - 1.0) * 100.0 if prev_close else math.nan
    coverage = (100 - stale) / 100
    return SeriesLevel(series, value, divisor, source_ts, prev_close, change, change_pct,
                       stale, coverage, 100)  # fmt: skip


def check_cycle(
    writes: LevelWrites,
    redis: ModelRedis,
    levels: Sequence[SeriesLevel],
    publish_ns: int,
    seqs: dict[str, int],
    listened: set[str] | None,
) -> None:
    before = len(redis.published)
    chunks = writes.chunks(LevelColumns.of_rows(levels), publish_ns, POLICY)
    assert len(chunks) == -(-len(levels) // CHUNK_SERIES)
    arrays = []
    for commands, count, messages in chunks:
        redis.run(commands, count)
        arrays.extend(msgspec.json.decode(b"[" + messages + b"]"))
    for lv in levels:
        seqs[lv.series] = seqs.get(lv.series, 0) + 1
    expected = {lv.series: level_record(lv, seqs[lv.series], publish_ns) for lv in levels}
    # P:levels: every series once, in order, exactly its message.
    assert [a["index"] for a in arrays] == [lv.series for lv in levels]
    assert arrays == [msgspec.json.decode(expected[lv.series].message) for lv in levels]
    for lv in levels:
        record = expected[lv.series]
        fields = level_fields(record)
        hash_now = redis.hashes[LAYOUT.index(lv.series).encode()]
        assert hash_now == dict(zip(fields[::2], fields[1::2], strict=True))
    channels = {key: message for key, message in redis.published[before:]}
    for lv in levels:
        channel = LAYOUT.series_channel(lv.series).encode()
        if listened is None or lv.series in listened:
            assert channels.pop(channel) == expected[lv.series].message
    assert not channels  # nothing on channels nobody listens to


finite = st.floats(min_value=1.0, max_value=1e7, allow_nan=False)
maybe = st.one_of(finite, st.just(math.nan))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=CHUNK_SERIES + 40),
    cycles=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=3_000),  # ms since the last cycle
            st.booleans(),  # a slow field (divisor) moves
            maybe,  # prev_close
            st.integers(min_value=0, max_value=3),  # stale
            st.one_of(st.none(), st.sets(st.integers(0, 5))),  # channels listened to
        ),
        min_size=1,
        max_size=5,
    ),
    data=st.data(),
)
def test_bulk_writes_equal_the_reference_records(
    n: int, cycles: list[tuple[int, bool, float, int, set[int] | None]], data: st.DataObject
) -> None:
    interest = ChannelInterest(b"p:levels:")
    writes = LevelWrites(LAYOUT, interest)
    redis = ModelRedis()
    series = [f"S{k}" for k in range(n)]
    seqs: dict[str, int] = {}
    now_ns, divisor = T0, 1e4
    for gap_ms, divisor_moves, prev_close, stale, listened in cycles:
        now_ns += gap_ms * 1_000_000
        if divisor_moves:
            divisor *= 1.01
        if listened is None:
            interest.update((), 1)
            heard = None
        else:
            heard = {series[k] for k in listened if k < n}
            interest.update((LAYOUT.series_channel(s).encode() for s in heard), 0)
        picked = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
        values = data.draw(st.lists(maybe, min_size=len(picked), max_size=len(picked)))
        levels = [
            level(series[k], v, prev_close, divisor, stale, now_ns - 5_000)
            for k, v in zip(picked, values, strict=True)
        ]
        check_cycle(writes, redis, levels, now_ns, seqs, heard)


def test_a_hash_is_written_whole_first_then_only_what_moves_until_its_refresh() -> None:
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    redis = ModelRedis()
    seqs: dict[str, int] = {}
    for k, at_ms in enumerate((0, 100, 200, FULL_REFRESH_MS + 1)):
        lv = level("A", 1000.0 + k, 990.0, 1e4, 0, T0)
        check_cycle(writes, redis, [lv], T0 + at_ms * 1_000_000, seqs, None)
    whole, delta = len(LEVEL_FIELDS), len(DELTA_FIELDS)
    assert redis.hset_sizes == [whole, delta, delta, whole]
    # History: one raw entry per interval (at 0 and past 1 s), each the whole record.
    history = redis.streams[LAYOUT.history("A").encode()]
    assert [len(entry) for entry in history] == [2 * whole, 2 * whole]


def test_a_new_connection_writes_every_hash_whole_again() -> None:
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    redis = ModelRedis()
    seqs: dict[str, int] = {}
    check_cycle(writes, redis, [level("A", 1.0, 1.0, 1.0, 0, T0)], T0, seqs, None)
    writes.connected()
    redis.hashes.clear()  # Redis restarted empty
    check_cycle(writes, redis, [level("A", 2.0, 1.0, 1.0, 0, T0)], T0 + 1_000_000, seqs, None)
    assert redis.hset_sizes == [len(LEVEL_FIELDS), len(LEVEL_FIELDS)]


def test_seqs_continue_from_what_redis_had() -> None:
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    writes.continue_seq("A", 41)
    writes.continue_seq("A", 7)  # never backwards
    redis = ModelRedis()
    check_cycle(writes, redis, [level("A", 1.0, 1.0, 1.0, 0, T0)], T0, {"A": 41}, None)
    assert writes.seq_of("A") == 42


def test_minute_bars_of_the_published_levels() -> None:
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    minute = 60_000_000_000
    start = T0 - T0 % minute
    for k, value in enumerate((10.0, 12.0, math.nan, 9.0, 11.0)):
        writes.chunks(
            LevelColumns.of_rows([level("A", value, 1.0, 1.0, 0, T0)]),
            start + k * 1_000_000_000,
            POLICY,
        )
    writes.chunks(LevelColumns.of_rows([level("A", 5.0, 1.0, 1.0, 0, T0)]), start + minute, POLICY)
    [(series, bar)] = writes.pending_bars
    assert series == "A"
    assert (bar.minute_ms, bar.open, bar.high, bar.low, bar.close, bar.updates) == (
        start // 1_000_000, 10.0, 12.0, 9.0, 11.0, 4,
    )  # fmt: skip


def test_bar_commands_are_the_reference_bar_rows() -> None:
    """Every finished bar's XADD has bar_row's fields and values (numbers compared as
    numbers: the bulk path formats them with msgspec, bar_row with repr)."""
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    minute = 60_000_000_000
    start = T0 - T0 % minute
    names = [f"S{k}" for k in range(CHUNK_SERIES + 5)]
    for k, value in enumerate((10.5, 12.25, 9.125)):
        levels = [level(s, value + j, 1.0, 1.0, 0, T0) for j, s in enumerate(names)]
        writes.chunks(LevelColumns.of_rows(levels), start + k * 1_000_000_000, POLICY)
    writes.roll_bars(start // 1_000_000 + 60_000)
    expected = dict(writes.pending_bars)
    assert len(expected) == len(names)
    now_ms = start // 1_000_000 + 60_000
    chunks = writes.bar_commands(3_600_000, now_ms)
    assert len(chunks) == 2 and not writes.pending_bars
    seen = set()
    for commands, count in chunks:
        reader = hiredis.Reader()
        reader.feed(commands)
        while (command := reader.gets()) is not False:
            count -= 1
            name, key, *args = command
            series = key.decode().removeprefix("p:bars:1m:")
            reference = [b"MINID", b"~", b"%d" % (now_ms - 3_600_000), b"*",
                         *bar_row(expected[series])]  # fmt: skip
            assert name == b"XADD" and key == LAYOUT.bars(series).encode()
            assert len(args) == len(reference)
            for got, want in zip(args, reference, strict=True):
                assert got == want or float(got) == float(want)
            seen.add(series)
        assert count == 0
    assert seen == set(names)


def test_a_quiet_series_bar_is_finished_by_a_cycle_without_levels() -> None:
    """A cycle with nothing but a checkpoint still ends the minute: the last bar of a series
    that stopped moving goes out then, not when it next moves (hours later, after a close)."""
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    minute = 60_000_000_000
    start = T0 - T0 % minute
    writes.chunks(LevelColumns.of_rows([level("A", 10.0, 1.0, 1.0, 0, T0)]), start, POLICY)
    assert not writes.pending_bars
    assert writes.chunks(LevelColumns.empty(), start + minute + 5_000_000_000, POLICY) == []
    [(series, bar)] = writes.pending_bars
    assert (series, bar.close, bar.updates) == ("A", 10.0, 1)


def test_after_another_writer_every_hash_is_written_whole_again() -> None:
    """On taking the lease over, the hashes may hold another replica's stale and coverage:
    the next write of each is whole, and history is not made due by it."""
    writes = LevelWrites(LAYOUT, ChannelInterest(b"p:levels:"))
    redis = ModelRedis()
    seqs: dict[str, int] = {}
    check_cycle(writes, redis, [level("A", 1.0, 1.0, 1.0, 0, T0)], T0, seqs, None)
    redis.hashes[LAYOUT.index("A").encode()][b"stale"] = b"7"  # the other replica's
    writes.write_whole()
    check_cycle(writes, redis, [level("A", 2.0, 1.0, 1.0, 0, T0)], T0 + 1_000_000, seqs, None)
    assert redis.hset_sizes == [len(LEVEL_FIELDS), len(LEVEL_FIELDS)]
    assert len(redis.streams[LAYOUT.history("A").encode()]) == 1
