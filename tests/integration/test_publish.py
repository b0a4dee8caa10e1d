"""Publishing against a real redis-server: keys, fields, one script call, intervals, outages."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Histogram

from streamer.backoff import Backoff
from streamer.config import RedisSettings
from streamer.engine import AuditRecord, SeriesLevel
from streamer.engine.results import CloseRecord
from streamer.keys import KeyLayout
from streamer.localservices import LocalRedis
from streamer.metrics import Metrics, observe_many
from streamer.persistence.checkpoint import Blobs
from streamer.publish import ACK_TIMEOUT_S, Outbox, PublishLoop, RedisPublisher
from streamer.service import redis_client
from tests.integration.harness import Store, eventually

LEVEL_FIELDS = {
    "level", "divisor", "ts", "source_ts", "seq", "prev_close", "change", "change_pct", "stale",
    "coverage",
}  # fmt: skip


def series_level(series: str, level: float, prev_close: float = 100.0) -> SeriesLevel:
    return SeriesLevel(
        series=series,
        level=level,
        divisor=0.5,
        source_ts=1_763_700_000_000_000_000,
        prev_close=prev_close,
        change=level - prev_close,
        change_pct=(level / prev_close - 1) * 100,
        stale=1,
        coverage=0.75,
        constituents=4,
    )


def sync_client(server: LocalRedis) -> Store:
    return Store(server.url)


async def test_every_key_a_cycle_writes_is_named_by_the_key_layout(
    redis_server: LocalRedis,
) -> None:
    """streamer.keys in single-instance mode names exactly what the service writes today."""
    client = aioredis.Redis.from_url(redis_server.url)
    publisher = RedisPublisher(client, "pfx", history_maxlen=50, clock=lambda: 42)
    audit = AuditRecord("ca-1", "split", "PX", "AAA", 7, 0.5, 0.25, 350.0, 350.0)
    close = CloseRecord("PX", "PX", "2025-11-21", 42, 101.0, 0.5, 101.0, 101.0, 101.0, 0.0, 0.0)
    checkpoint = Blobs(structure=b"s", market=b"m", meta=b"x", revision=1)
    levels = [series_level("PX", 101.0), series_level("PX.TR", 102.0)]
    await publisher.publish(levels, [audit], [close], checkpoint)
    written = {k.decode() if isinstance(k, bytes) else k for k in await client.keys("*")}
    keys = KeyLayout("pfx")
    expected = set(keys.cycle_keys(["PX", "PX.TR"])) - {keys.lease()}
    expected -= {keys.bars("PX"), keys.bars("PX.TR"), keys.closes("PX.TR")}  # none written
    assert written == expected
    await publisher.close()
    await client.aclose()


async def test_one_cycle_writes_hash_channel_history_and_actions(redis_server: LocalRedis) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    publisher = RedisPublisher(client, "pfx", history_maxlen=50, clock=lambda: 42)
    store = sync_client(redis_server)
    pubsub = store.pubsub()
    pubsub.subscribe("pfx:levels")
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    audit = AuditRecord("ca-1", "split", "PX", "AAA", 7, 0.5, 0.25, 350.0, 350.0)
    await publisher.publish([series_level("PX", 101.0), series_level("PX.TR", 102.0)], [audit])

    fields = store.hgetall("pfx:index:PX")
    assert set(fields) == LEVEL_FIELDS
    assert (fields["level"], fields["ts"], fields["seq"], fields["stale"]) == (
        "101.0",
        "42",
        "1",
        "1",
    )
    assert float(fields["change_pct"]) == pytest.approx(1.0)
    assert store.hget("pfx:index:PX.TR", "level") == "102.0"
    message = json.loads(pubsub.get_message(timeout=1)["data"])
    assert message["index"] == "PX" and message["level"] == 101.0 and message["seq"] == 1
    assert set(message) == LEVEL_FIELDS | {"index"}
    ((_, entry),) = store.xrange("pfx:history:PX")
    assert entry == fields
    ((_, action),) = store.xrange("pfx:actions")
    assert action["id"] == "ca-1" and action["index"] == "PX"
    assert float(action["divisor_before"]) == 0.5 and float(action["divisor_after"]) == 0.25
    pubsub.close()
    await client.aclose()


async def test_history_is_trimmed_and_seq_continues_across_restarts(
    redis_server: LocalRedis,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    first = RedisPublisher(client, "p", history_maxlen=10)
    for i in range(300):
        await first.publish([series_level("X", 100.0 + i)])
    store = sync_client(redis_server)
    assert store.xlen("p:history:X") < 300  # approximate MAXLEN trims in whole nodes
    assert store.hget("p:index:X", "seq") == "300"
    second = RedisPublisher(client, "p", history_maxlen=10)
    await second.load_sequences(["X", "NEW"])
    await second.publish([series_level("X", 1.0), series_level("NEW", 2.0)])
    assert store.hget("p:index:X", "seq") == "301"
    assert store.hget("p:index:NEW", "seq") == "1"
    await client.aclose()


async def test_unknown_values_are_empty_in_redis_and_null_in_json(redis_server: LocalRedis) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = sync_client(redis_server)
    pubsub = store.pubsub()
    pubsub.subscribe("p:levels")
    pubsub.get_message(timeout=1)
    await RedisPublisher(client, "p", 10).publish([series_level("X", 100.0, prev_close=math.nan)])
    assert store.hget("p:index:X", "prev_close") == ""
    assert json.loads(pubsub.get_message(timeout=1)["data"])["prev_close"] is None
    pubsub.close()
    await client.aclose()


async def test_interval_mode_publishes_every_series_on_the_timer(redis_server: LocalRedis) -> None:
    levels = [series_level("A", 1.0), series_level("B", 2.0)]
    client = aioredis.Redis.from_url(redis_server.url)
    loop = PublishLoop(
        RedisPublisher(client, "p", 100),
        lambda wanted: [lv for lv in levels if wanted is None or lv.series in wanted],
        Outbox(),
        Metrics(),
        interval_ms=50,
    )
    task = asyncio.create_task(loop.run())
    store = sync_client(redis_server)
    await eventually(lambda: store.xlen("p:history:B") >= 3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert abs(store.xlen("p:history:A") - store.xlen("p:history:B")) <= 1
    await client.aclose()


@asynccontextmanager
async def running_loop(
    redis_server: LocalRedis, current: dict[str, SeriesLevel], outbox: Outbox, metrics: Metrics
) -> AsyncIterator[PublishLoop]:
    """A PublishLoop (change-driven) publishing ``current`` under prefix ``p``."""
    client = redis_client(RedisSettings(url=redis_server.url))
    loop = PublishLoop(
        RedisPublisher(client, "p", 100),
        lambda wanted: [lv for s, lv in current.items() if wanted is None or s in wanted],
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
        await client.aclose()


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
        client = redis_client(RedisSettings(url=server.url, password="s3cret"))
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
