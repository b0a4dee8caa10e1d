"""Ingestion against a real mosquitto: the fast path, framing, size cap, decoding, the queue."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from streamer.backoff import Backoff
from streamer.config import MqttSettings
from streamer.ingest import Inbound, MessageRouter, RawInbox, TickQueue
from streamer.ingest.transport import MqttIngest, broker_address
from streamer.localservices import LocalMosquitto
from streamer.metrics import Metrics
from streamer.wire import Split, Tick
from tests.integration.harness import Feed, eventually


async def connected_ingest(
    broker: LocalMosquitto, inbox: RawInbox, metrics: Metrics
) -> tuple[MqttIngest, asyncio.Task[None]]:
    ingest = MqttIngest(
        MqttSettings(url=broker.url, client_id=f"test-{broker.port}"),
        inbox,
        metrics,
        Backoff(base_s=0.02, cap_s=0.2),
    )
    task = asyncio.create_task(ingest.run())
    async with asyncio.timeout(10):
        await ingest.connected.wait()
    return ingest, task


async def test_fast_path_delivers_every_message_in_order_with_the_size_cap(
    mosquitto: LocalMosquitto,
) -> None:
    inbox = RawInbox(max_payload_bytes=600_000)
    ingest, task = await connected_ingest(mosquitto, inbox, Metrics())
    feed = Feed(mosquitto.port)
    try:
        big = b'{"symbol":"AAA","price":1.0,"pad":"' + b"x" * 500_000 + b'"}'  # > one read
        for i in range(2000):
            feed.client.publish(f"ticks/S{i % 7}", b'{"symbol":"S","price":%d}' % (i + 1))
        feed.send("ticks/big", big, qos=0)
        feed.send("ticks/huge", b"x" * 700_000, qos=0)  # over the cap: never decoded
        feed.send("control/split", b'{"action":"split"}', qos=1)  # through paho's own path
        feed.send("ticks/\u00e9t\u00e9", b"{}", qos=0)  # a UTF-8 topic
        await eventually(lambda: inbox.received + len(inbox) >= 2003)
        messages = inbox.take()
        prices = [
            msgspec.json.decode(m[1])["price"] for m in messages if m[0].startswith("ticks/S")
        ]
        assert prices == list(range(1, 2001))
        topics = [m[0] for m in messages]
        assert (
            "ticks/big" in topics and "control/split" in topics and "ticks/\u00e9t\u00e9" in topics
        )
        assert next(m[1] for m in messages if m[0] == "ticks/big") == big
        assert inbox.take_rejected() == {"oversize": 1}
        assert all(isinstance(m[2], int) and m[2] > 0 for m in messages)
    finally:
        feed.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ingest.connections == 1


async def test_mqtts_uses_tls_and_the_fast_path_reads_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with LocalMosquitto(tls=True) as broker:
        # The service trusts the system store, which OpenSSL lets SSL_CERT_FILE replace.
        monkeypatch.setenv("SSL_CERT_FILE", str(broker.ca_file))
        inbox = RawInbox(max_payload_bytes=1_000_000)
        assert broker.url.startswith("mqtts://")
        ingest, task = await connected_ingest(broker, inbox, Metrics())
        feed = Feed(broker.port, ca_file=broker.ca_file)
        try:
            for i in range(500):
                feed.client.publish("ticks/T", b'{"symbol":"T","price":%d}' % (i + 1))
            feed.send("ticks/large", b"y" * 300_000, qos=0)
            await eventually(lambda: inbox.received + len(inbox) >= 501)
            messages = inbox.take()
            assert [m[1] for m in messages[:500]] == [
                b'{"symbol":"T","price":%d}' % (i + 1) for i in range(500)
            ]
            assert messages[500][1] == b"y" * 300_000
        finally:
            feed.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert ingest.connections == 1


async def test_reconnects_and_resubscribes_after_the_broker_restarts(
    mosquitto: LocalMosquitto,
) -> None:
    inbox = RawInbox(max_payload_bytes=1024)
    metrics = Metrics()
    ingest, task = await connected_ingest(mosquitto, inbox, metrics)
    try:
        await asyncio.to_thread(mosquitto.restart, False)
        await eventually(lambda: ingest.connections == 2)
        feed = Feed(mosquitto.port)
        feed.send("ticks/AAA", b'{"symbol":"AAA","price":1.5}')
        feed.close()
        await eventually(lambda: len(inbox) == 1)
        assert metrics.registry.get_sample_value("streamer_mqtt_reconnects_total") == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_router_decodes_bursts_and_counts_what_it_drops() -> None:
    router = MessageRouter()
    now = 1_000
    raw = [
        ("ticks/A", b'{"symbol":"A","price":1.0}', now, 0),
        ("ticks/B", b'{"symbol":"B","price":2.0,"seq":3}', now + 1, 0),
        ("ticks/batch", msgspec.msgpack.encode([{"symbol": "C", "price": 3.0}] * 3), now + 2, 0),
        ("fx/EURUSD", b'{"pair":"EURUSD","rate":1.08}', now + 3, 0),
        ("reference/X", b'{"index":"X","level":100.0}', now + 4, 0),
        ("control/s", b'{"action":"split","symbol":"A","ratio":2.0,"id":"s1"}', now + 5, 0),
        ("weather/today", b"{}", now + 6, 0),
    ]
    out = router.decode(raw)
    assert [t.symbol for t in out.ticks] == ["A", "B", "C", "C", "C"]
    assert out.tick_receipts == [now, now + 1, now + 2, now + 2, now + 2]
    assert out.fx[0].rate == 1.08 and out.references[0].level == 100.0
    # An action without an effective time takes effect at its receipt.
    assert out.actions == [Split(id="s1", symbol="A", ratio=2.0, effective=now + 5)]
    assert out.rejected == {"unknown_topic": 1}
    assert out.newest_receipt_ns == now + 6


@pytest.mark.parametrize(
    "bad",
    [
        b'{"symbol":"A","price":"x"}',  # wrong type
        b"\xc1\xc1\xc1",  # neither JSON nor MessagePack
        b'{"symbol":"A","price":1.0}\n{"symbol":"B","price":2.0}',  # two objects smuggled
        b"[1, 2",  # truncated
    ],
)
def test_one_bad_single_tick_payload_costs_only_itself(bad: bytes) -> None:
    router = MessageRouter()
    good = [(f"ticks/{i}", b'{"symbol":"S%d","price":%d.0}' % (i, i + 1), i, 0) for i in range(5)]
    out = router.decode([*good[:2], ("ticks/bad", bad, 99, 0), *good[2:]])
    assert [t.symbol for t in out.ticks] == ["S0", "S1", "S2", "S3", "S4"]
    assert out.tick_receipts == [0, 1, 2, 3, 4]
    assert out.rejected["malformed"] >= 1


def test_batch_with_one_bad_element_keeps_the_good_ones() -> None:
    payload = b'[{"symbol":"A","price":1.0},{"symbol":"B"},{"symbol":"C","price":3.0}]'
    out: Inbound = MessageRouter().decode([("ticks/x", payload, 7, 0)])
    assert [t.symbol for t in out.ticks] == ["A", "C"]
    assert out.rejected == {"malformed": 1}


def test_queue_conflates_to_the_latest_tick_per_symbol_in_order() -> None:
    queue = TickQueue(max_ticks=5)
    ticks = [Tick(symbol=s, price=float(i)) for i, s in enumerate("ABABCAB")]
    queue.extend(ticks, list(range(len(ticks))))
    assert queue.take_conflated() == 4
    taken, receipts = queue.take(10)
    assert [(t.symbol, t.price) for t in taken] == [("C", 4.0), ("A", 5.0), ("B", 6.0)]
    assert receipts == [4, 5, 6]
    queue.extend(ticks[:3], [0, 1, 2])
    first, _ = queue.take(2)
    rest, _ = queue.take(2)
    assert [t.price for t in first + rest] == [0.0, 1.0, 2.0]


def test_backoff_grows_jittered_and_capped() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert ceiling * 0.5 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 0.1


def test_broker_address_takes_the_environment_password_over_the_url() -> None:
    plain = broker_address(MqttSettings(url="mqtt://feed:urlpw@broker.local"))
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == (
        "broker.local", 1883, "feed", "urlpw", False,
    )  # fmt: skip
    tls = broker_address(MqttSettings(url="mqtts://feed@broker.local", password="envpw"))
    assert (tls.port, tls.username, tls.password, tls.tls) == (8883, "feed", "envpw", True)
