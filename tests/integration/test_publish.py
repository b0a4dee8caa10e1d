"""Publishing against a real redis-server: keys, fields, channels, history, bars, intervals,
outages."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry, Histogram

from streamer import outputs
from streamer.backoff import Backoff
from streamer.config import RedisSettings
from streamer.endpoints import parse_redis_url
from streamer.engine import AuditRecord, SeriesLevel
from streamer.engine.results import CloseRecord, LevelColumns
from streamer.keys import KeyLayout
from streamer.localservices import LocalRedis
from streamer.metrics import Metrics, observe_many
from streamer.persistence.checkpoint import Blobs
from streamer.persistence.stores import READ_STATE_LUA
from streamer.publish import ACK_TIMEOUT_S, HistoryPolicy, Outbox, PublishLoop, RedisPublisher
from streamer.publish.writer import CHECKPOINT_WRITTEN, STATE_LUA, STRUCTURE_SLICE
from streamer.redis_clients import async_client
from tests.integration.harness import Store, eventually

LEVEL_FIELDS = set(outputs.LEVEL_FIELDS)
SOURCE_TS = 1_763_700_000_000_000_000


def series_level(series: str, level: float, prev_close: float = 100.0) -> SeriesLevel:
    return SeriesLevel(
        series=series,
        level=level,
        divisor=0.5,
        source_ts=SOURCE_TS,
        prev_close=prev_close,
        change=level - prev_close,
        change_pct=(level / prev_close - 1) * 100,
        stale=1,
        coverage=0.75,
        constituents=4,
    )


def sync_client(server: LocalRedis) -> Store:
    return Store(server.url)


def publisher_for(
    server: LocalRedis,
    prefix: str = "p",
    clock: Callable[[], int] = time.time_ns,
    history: HistoryPolicy | None = None,
) -> RedisPublisher:
    return RedisPublisher(parse_redis_url(server.url), KeyLayout(prefix), 100, clock, history)


class Clock:
    """A settable clock (ns)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def test_one_cycle_writes_hash_channels_history_and_actions(
    redis_server: LocalRedis,
) -> None:
    publish_ns = 1_763_700_000_123_456_789
    publisher = publisher_for(redis_server, "pfx", Clock(publish_ns))
    store = sync_client(redis_server)
    pubsub = store.pubsub()
    pubsub.subscribe("pfx:levels", "pfx:levels:PX")
    for _ in range(2):
        assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    audit = AuditRecord("ca-1", "split", "PX", "AAA", 7, 0.5, 0.25, 350.0, 350.0)
    await publisher.publish([series_level("PX", 101.0), series_level("PX.TR", 102.0)], [audit])

    fields = store.hgetall("pfx:index:PX")
    assert set(fields) == LEVEL_FIELDS
    assert fields["schema"] == str(outputs.SCHEMA_VERSION)
    assert (fields["level"], fields["ts"], fields["seq"], fields["stale"]) == (
        "101.0",
        str(publish_ns),
        "1",
        "1",
    )
    assert fields["ts_ms"] == str(publish_ns // 1_000_000)
    assert fields["source_ts_ms"] == str(SOURCE_TS // 1_000_000)
    assert float(fields["change_pct"]) == pytest.approx(1.0)
    assert store.hget("pfx:index:PX.TR", "level") == "102.0"
    # One message per series on its own channel, and one array per transaction on the
    # all-series channel; the same fields in both.
    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    by_channel = {m["channel"]: json.loads(m["data"]) for m in messages}
    single = by_channel["pfx:levels:PX"]
    assert single["index"] == "PX" and single["level"] == 101.0 and single["seq"] == 1
    assert set(single) == LEVEL_FIELDS | {"index"}
    batch = by_channel["pfx:levels"]
    assert [m["index"] for m in batch] == ["PX", "PX.TR"]
    assert batch[0] == single
    ((_, entry),) = store.xrange("pfx:history:PX")
    assert entry == fields
    ((_, action),) = store.xrange("pfx:actions")
    assert action["id"] == "ca-1" and action["index"] == "PX"
    assert action["schema"] == str(outputs.SCHEMA_VERSION)
    assert float(action["divisor_before"]) == 0.5 and float(action["divisor_after"]) == 0.25
    pubsub.close()
    await publisher.close()


async def test_every_key_a_cycle_writes_is_named_by_the_key_layout(
    redis_server: LocalRedis,
) -> None:
    """streamer.keys names exactly what a publish cycle writes."""
    minute_ns = 1_763_700_000_000 // 60_000 * 60_000 * 1_000_000
    clock = Clock(minute_ns)
    publisher = publisher_for(redis_server, "pfx", clock)
    audit = AuditRecord("ca-1", "split", "PX", "AAA", 7, 0.5, 0.25, 350.0, 350.0)
    close = CloseRecord("PX", "PX", "2025-11-21", 42, 101.0, 0.5, 101.0, 101.0, 101.0, 0.0, 0.0)
    checkpoint = Blobs(structure=b"s", market=b"m", meta=b"x", revision=1)
    levels = [series_level("PX", 101.0), series_level("PX.TR", 102.0)]
    sent = await publisher.send(levels, [audit], [close], checkpoint, {"PX": b"{}", "PX.TR": b"{}"})
    await sent.acks[-1]
    clock.now += 60_000_000_000  # the next minute: the bars of the first are written
    await publisher.publish(levels)
    store = sync_client(redis_server)
    written = set(store.client.keys("*"))
    keys = KeyLayout("pfx")
    expected = set(keys.cycle_keys(["PX", "PX.TR"])) | {keys.directory()}
    expected -= {keys.lease(), keys.lease_epoch(), keys.closes("PX.TR")}  # no lease; no close
    assert written == expected
    await publisher.close()


async def test_seq_continues_across_restarts(redis_server: LocalRedis) -> None:
    first = publisher_for(redis_server)
    for i in range(30):
        await first.publish([series_level("X", 100.0 + i)])
    await first.close()
    store = sync_client(redis_server)
    assert store.hget("p:index:X", "seq") == "30"
    second = publisher_for(redis_server)
    await second.load_sequences(["X", "NEW"])
    await second.publish([series_level("X", 1.0), series_level("NEW", 2.0)])
    assert store.hget("p:index:X", "seq") == "31"
    assert store.hget("p:index:NEW", "seq") == "1"
    await second.close()


async def test_raw_history_is_sampled_per_series_and_trimmed_by_time(
    redis_server: LocalRedis,
) -> None:
    clock = Clock(time.time_ns())
    # One raw entry per series per second of the publisher's clock, kept for a minute.
    policy = HistoryPolicy(interval_ms=1000, retention_ms=60_000)
    publisher = publisher_for(redis_server, clock=clock, history=policy)
    store = sync_client(redis_server)
    for i in range(50):  # 50 publishes within 0.49 s: one raw entry
        clock.now += 10_000_000
        await publisher.publish([series_level("X", 100.0 + i)])
    assert store.xlen("p:history:X") == 1
    assert store.hget("p:index:X", "level") == "149.0"  # the hash has every publish
    # Stream ids are Redis's own clock: MINID trims by it, so this test advances the
    # publisher's clock past the retention and checks old nodes go.
    policy = HistoryPolicy(interval_ms=0, retention_ms=200)
    publisher = publisher_for(redis_server, history=policy)
    for i in range(250):
        await publisher.publish([series_level("Y", 100.0 + i)])
    await asyncio.sleep(0.25)
    await publisher.publish([series_level("Y", 1.0)])
    # Trimming is approximate (~, whole stream nodes of 100 entries): every full node older
    # than the cutoff is gone.
    assert store.xlen("p:history:Y") <= 100
    assert store.xrange("p:history:Y")[-1][1]["level"] == "1.0"
    await publisher.close()


async def test_minute_bars_are_written_when_their_minute_is_over(
    redis_server: LocalRedis,
) -> None:
    minute = 1_763_700_000_000 // 60_000 * 60_000  # ms
    clock = Clock(minute * 1_000_000 + 5_000_000_000)  # 5 s into the minute
    publisher = publisher_for(redis_server, clock=clock)
    store = sync_client(redis_server)
    for value in (100.0, 103.0, 98.0, 101.0):
        await publisher.publish([series_level("X", value)])
        clock.now += 1_000_000_000
    assert store.xlen("p:bars:1m:X") == 0  # the minute is not over
    clock.now = (minute + 60_000) * 1_000_000 + 1_000_000  # the next minute
    await publisher.publish([series_level("X", 102.0)])
    ((_, bar),) = store.xrange("p:bars:1m:X")
    assert bar == {
        "schema": str(outputs.SCHEMA_VERSION),
        "t": str(minute),
        "o": "100.0",
        "h": "103.0",
        "l": "98.0",
        "c": "101.0",
        "n": "4",
    }
    # At shutdown the unfinished minute is written as it stands.
    publisher.take_unfinished_bars()
    await publisher.publish([])
    bars = [fields for _, fields in store.xrange("p:bars:1m:X")]
    assert bars[-1]["t"] == str(minute + 60_000) and bars[-1]["c"] == "102.0"
    await publisher.close()


async def test_unknown_values_are_empty_in_redis_and_null_in_json(redis_server: LocalRedis) -> None:
    store = sync_client(redis_server)
    pubsub = store.pubsub()
    pubsub.subscribe("p:levels:X")
    pubsub.get_message(timeout=1)
    publisher = publisher_for(redis_server)
    await publisher.publish([series_level("X", 100.0, prev_close=math.nan)])
    assert store.hget("p:index:X", "prev_close") == ""
    assert json.loads(pubsub.get_message(timeout=1)["data"])["prev_close"] is None
    pubsub.close()
    await publisher.close()


async def test_interval_mode_publishes_every_series_on_the_timer(redis_server: LocalRedis) -> None:
    levels = [series_level("A", 1.0), series_level("B", 2.0)]
    loop = PublishLoop(
        publisher_for(redis_server),
        lambda wanted: LevelColumns.of_rows(
            [lv for lv in levels if wanted is None or lv.series in wanted]
        ),
        Outbox(),
        Metrics(),
        interval_ms=50,
    )
    task = asyncio.create_task(loop.run())
    store = sync_client(redis_server)
    await eventually(lambda: int(store.hget("p:index:B", "seq") or 0) >= 3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert abs(store.xlen("p:history:A") - store.xlen("p:history:B")) <= 1
    await loop.publisher.close()


@asynccontextmanager
async def running_loop(
    redis_server: LocalRedis, current: dict[str, SeriesLevel], outbox: Outbox, metrics: Metrics
) -> AsyncIterator[PublishLoop]:
    """A PublishLoop (change-driven) publishing ``current`` under prefix ``p``."""
    loop = PublishLoop(
        publisher_for(redis_server),
        lambda wanted: LevelColumns.of_rows(
            [lv for s, lv in current.items() if wanted is None or s in wanted]
        ),
        outbox,
        metrics,
        backoff=Backoff(base_s=0.02, cap_s=0.2),
    )
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loop.publisher.close()


async def test_redis_outage_counts_errors_keeps_audit_and_resyncs(redis_server: LocalRedis) -> None:
    current = {"A": series_level("A", 1.0)}
    outbox, metrics = Outbox(), Metrics()
    store = sync_client(redis_server)
    async with running_loop(redis_server, current, outbox, metrics):
        await eventually(lambda: store.hget("p:index:A", "level") == "1.0")
        await asyncio.to_thread(redis_server.stop, False)
        current["A"] = series_level("A", 2.0)
        outbox.add(["A"], [AuditRecord("ca-9", "delete", "A", "Z", 1, 1.0, 2.0, 5.0, 5.0)], [1])
        await eventually(lambda: redis_errors(metrics) >= 1)
        current["A"] = series_level("A", 3.0)  # computed during the outage
        await asyncio.to_thread(redis_server.start)
        await eventually(lambda: store.hget("p:index:A", "level") == "3.0")
        assert [f["id"] for _, f in store.xrange("p:actions")] == ["ca-9"]
        assert store.xlen("p:history:A") == 1  # the latest level only, no replay


async def test_a_redis_that_stops_answering_fails_the_cycles_and_keeps_their_audit(
    redis_server: LocalRedis,
) -> None:
    """SIGSTOP leaves the connection open but unanswered: only the acknowledgement timeout
    notices; the audit record of the stuck cycle is written once Redis answers again."""
    current = {"A": series_level("A", 1.0)}
    outbox, metrics = Outbox(), Metrics()
    store = sync_client(redis_server)
    pid = redis_server.pid
    assert pid is not None
    async with running_loop(redis_server, current, outbox, metrics) as loop:
        try:
            await eventually(lambda: store.hget("p:index:A", "level") == "1.0")
            os.kill(pid, signal.SIGSTOP)
            current["A"] = series_level("A", 2.0)
            record = AuditRecord("ca-1", "split", "A", "Z", 1, 1.0, 2.0, 5.0, 5.0)
            outbox.add(["A"], [record], [1])
            await eventually(lambda: redis_errors(metrics) >= 1, within=ACK_TIMEOUT_S + 5)
            os.kill(pid, signal.SIGCONT)
            await eventually(lambda: loop.connected and store.hget("p:index:A", "level") == "2.0")
            # Redis may have applied the stuck cycle after all (it was in its socket buffer)
            # and the loop sent the record again: it is still written once.
            await loop.cycle(everything=True)
            assert [f["id"] for _, f in store.xrange("p:actions")] == ["ca-1"]
        finally:
            os.kill(pid, signal.SIGCONT)


async def test_password_from_the_environment_setting() -> None:
    with LocalRedis(password="s3cret") as server:
        client = async_client(RedisSettings(url=server.url, password="s3cret"))
        assert await client.ping()
        await client.aclose()


def test_observe_many_matches_observe_one_by_one() -> None:
    values = np.array([0.0001, 0.002, 0.002, 0.5, 3.0, 100.0, -1.0])
    weights = np.array([1, 2, 1, 1, 3, 1, 1], dtype=float)
    bulk = Histogram("bulk", "b", buckets=(0.001, 0.01, 1.0, 10.0), registry=CollectorRegistry())
    single = Histogram("one", "o", buckets=(0.001, 0.01, 1.0, 10.0), registry=CollectorRegistry())
    observe_many(bulk, values, weights)
    for value, weight in zip(values, weights, strict=True):
        for _ in range(int(weight)):
            single.observe(float(value))

    def samples(h: Histogram) -> dict[str, float]:
        family = next(iter(h.collect()))
        return {
            s.name.split("_", 1)[1] + s.labels.get("le", ""): s.value
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(bulk) == pytest.approx(samples(single))


def redis_errors(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("streamer_redis_errors_total") or 0.0


async def test_a_capped_series_always_ends_at_its_newest_level(redis_server: LocalRedis) -> None:
    """Changes faster than ``min_interval_ms`` are conflated, never lost: once the changes
    stop, the newest level is published within the cap."""
    current = {"A": series_level("A", 0.0)}
    outbox = Outbox()
    store = sync_client(redis_server)
    pubsub = store.pubsub()
    pubsub.subscribe("p:levels:A")
    pubsub.get_message(timeout=1)
    loop = PublishLoop(
        publisher_for(redis_server),
        lambda wanted: LevelColumns.of_rows(
            [lv for s, lv in current.items() if wanted is None or s in wanted]
        ),
        outbox,
        Metrics(),
        min_interval_ms=200,
    )
    task = asyncio.create_task(loop.run())
    try:
        await eventually(lambda: store.hget("p:index:A", "level") == "0.0")
        for i in range(1, 101):  # 100 changes in ~0.2 s
            current["A"] = series_level("A", float(i))
            outbox.add(["A"])
            await asyncio.sleep(0.002)
        changed_at = time.monotonic()
        await eventually(lambda: store.hget("p:index:A", "level") == "100.0", within=2.0)
        assert time.monotonic() - changed_at < 2.0
        messages = []
        while (m := pubsub.get_message(timeout=0.3)) is not None:
            messages.append(json.loads(m["data"]))
        # Far fewer messages than changes, and the last one is the newest level.
        assert 1 <= len(messages) <= 10
        assert messages[-1]["level"] == 100.0
        publish_ms = [m["ts_ms"] for m in messages]
        assert all(b - a >= 200 for a, b in itertools.pairwise(publish_ms))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loop.publisher.close()
        pubsub.close()


def directory_loop(
    server: LocalRedis, members: dict[str, int], shard: str | None = None
) -> PublishLoop:
    """A publish loop whose directory lists ``members`` (series -> constituents)."""
    current = {s: series_level(s, 1.0) for s in members}

    def directory() -> dict[str, bytes]:
        return {
            s: json.dumps({"id": s, "constituents": n, "shard": shard or ""}).encode()
            for s, n in members.items()
        }

    publisher = RedisPublisher(parse_redis_url(server.url), KeyLayout("p", shard), 100)
    return PublishLoop(
        publisher,
        lambda wanted: LevelColumns.of_rows(
            [lv for s, lv in current.items() if wanted is None or s in wanted]
        ),
        Outbox(),
        Metrics(),
        directory=directory,
    )


@asynccontextmanager
async def running(loop: PublishLoop) -> AsyncIterator[PublishLoop]:
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loop.publisher.close()


def directory_entries(store: Store) -> dict[str, dict[str, object]]:
    return {s: json.loads(e) for s, e in store.hgetall("p:series").items()}


async def test_the_directory_lists_every_series_and_is_rewritten_when_it_changes(
    redis_server: LocalRedis,
) -> None:
    members = {"A": 3}
    store = sync_client(redis_server)
    async with running(directory_loop(redis_server, members)) as loop:
        await eventually(lambda: "A" in directory_entries(store))
        assert directory_entries(store)["A"]["constituents"] == 3
        members["A"] = 4  # e.g. an add action
        loop.directory_changed()
        await eventually(lambda: directory_entries(store)["A"]["constituents"] == 4)
        # A Redis restart loses the directory; the resync after it writes it again.
        await asyncio.to_thread(redis_server.stop, False)
        await asyncio.to_thread(redis_server.start)
        await eventually(lambda: "A" in directory_entries(store))


async def test_a_restart_with_another_config_prunes_only_its_own_shards_old_series(
    redis_server: LocalRedis,
) -> None:
    store = sync_client(redis_server)
    async with running(directory_loop(redis_server, {"A": 1, "OLD": 1}, "one")):
        await eventually(lambda: set(directory_entries(store)) == {"A", "OLD"})
    async with running(directory_loop(redis_server, {"G": 1}, "two")):
        await eventually(lambda: set(directory_entries(store)) == {"A", "OLD", "G"})
    # Shard "one" restarts without OLD: its entry goes, shard "two"'s stays.
    async with running(directory_loop(redis_server, {"A": 2}, "one")):
        await eventually(lambda: set(directory_entries(store)) == {"A", "G"})
        await eventually(lambda: directory_entries(store)["A"]["constituents"] == 2)


async def test_a_large_checkpoint_structure_goes_in_slices_and_is_renamed_into_place(
    redis_server: LocalRedis,
) -> None:
    """A structure past STRUCTURE_SLICE is pushed slice by slice to the writer's incoming
    list before its cycle, then renamed in the checkpoint script: every byte arrives, no
    incoming key is left behind, and the state reads back whole (the reader takes a list of
    slices as it takes a string)."""
    publisher = publisher_for(redis_server)
    structure = os.urandom(3 * STRUCTURE_SLICE + 12_345)
    checkpoint = Blobs(structure=structure, market=b"m1", meta=b"x1", revision=7)
    sent = await publisher.send([series_level("X", 1.0)], checkpoint=checkpoint)
    replies = [await ack for ack in sent.acks]
    assert replies[sent.first].value[sent.state_at] == CHECKPOINT_WRITTEN
    keys = KeyLayout("p")
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.type(keys.state("structure")) == b"list"
    assert b"".join(cast(list[bytes], raw.lrange(keys.state("structure"), 0, -1))) == structure
    assert raw.get(keys.state("revision")) == b"7"
    assert raw.get(keys.state("market")) == b"m1"
    assert raw.ttl(keys.state("structure")) == -1  # the incoming key's expiry did not follow
    assert not raw.keys("*incoming*")
    # The next checkpoint of the same revision carries no structure: only the market part.
    later = Blobs(structure=None, market=b"m2", meta=b"x2", revision=7)
    sent = await publisher.send([series_level("X", 2.0)], checkpoint=later)
    replies = [await ack for ack in sent.acks]
    assert replies[sent.first].value[sent.state_at] == CHECKPOINT_WRITTEN
    assert raw.get(keys.state("market")) == b"m2"
    reply = raw.eval(READ_STATE_LUA, 3, *keys.state_keys()[:3])
    assert reply == [raw.lrange(keys.state("structure"), 0, -1), b"m2", b"x2"]
    # A small structure is a string again, and reads the same way.
    raw.set(keys.state("structure"), b"small")
    assert raw.eval(READ_STATE_LUA, 3, *keys.state_keys()[:3]) == [b"small", b"m2", b"x2"]
    raw.close()
    await publisher.close()


def test_an_incomplete_incoming_structure_writes_nothing(redis_server: LocalRedis) -> None:
    """If the slices are not all there when the script runs (Redis restarted, the key
    expired), neither part is written: the writer sends the checkpoint again."""
    raw = redis.Redis.from_url(redis_server.url)
    keys = KeyLayout("p")
    state = keys.state_keys()
    raw.set(state[0], b"old structure")
    raw.set(state[3], b"3")
    raw.set(state[1], b"old market")
    raw.rpush(state[0] + ":incoming:t", b"slice 1", b"slice 2")
    written = raw.eval(STATE_LUA.decode(), 5, *state, state[0] + ":incoming:t",
                       b"4", b"", b"new market", b"meta", b"3")  # fmt: skip
    assert written == 0
    assert raw.get(state[0]) == b"old structure"
    assert raw.get(state[1]) == b"old market"
    assert raw.get(state[3]) == b"3"
    raw.close()


async def _publish_calls(raw: redis.Redis) -> int:
    """PUBLISH commands Redis has run (after the cycles before have been acknowledged)."""
    stats = raw.info("commandstats").get("cmdstat_publish", {})
    return int(stats.get("calls", 0))


@pytest.mark.parametrize("prefix", ["p", "p[1]*"])
async def test_a_series_channel_is_written_while_someone_listens(
    redis_server: LocalRedis, prefix: str
) -> None:
    """Per-series PUBLISH goes only to channels with a subscriber (asked of Redis every
    250 ms); a pattern subscriber means every channel.  A prefix's own glob characters do not
    hide its channels."""
    publisher = publisher_for(redis_server, prefix)
    raw = redis.Redis.from_url(redis_server.url)
    store = sync_client(redis_server)
    listener = store.pubsub()
    listener.subscribe(f"{prefix}:levels:A")
    listener.get_message(timeout=1)  # the subscription's confirmation

    async def cycles(count: int) -> None:
        for k in range(count):
            await publisher.publish([series_level("A", 100.0 + k), series_level("B", 50.0 + k)])
            await asyncio.sleep(0.3)  # past the interest poll

    await cycles(2)  # the polls have answered: only A has a subscriber
    before = await _publish_calls(raw)
    await cycles(3)
    assert await _publish_calls(raw) - before == 3 * 2  # P:levels and A's channel, not B's
    heard = []
    while (message := listener.get_message(timeout=0.2)) is not None:
        heard.append(json.loads(message["data"])["index"])
    assert heard == ["A"] * 5
    watcher = store.pubsub()
    watcher.psubscribe(f"{prefix}:levels:*")
    watcher.get_message(timeout=1)
    await cycles(2)
    before = await _publish_calls(raw)
    await cycles(2)
    assert await _publish_calls(raw) - before == 2 * 3  # a pattern: every channel again
    listener.close()
    watcher.close()
    raw.close()
    await publisher.close()
