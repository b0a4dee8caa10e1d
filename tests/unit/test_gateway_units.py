"""The gateway's pure parts: the OpenAPI document against the routes, event ids, conflation
and the record parsers (no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streamer.config import GatewaySettings
from streamer.gateway.app import Gateway, build_app
from streamer.gateway.client import ClientStream, Event, decode_event_id, encode_event_id
from streamer.gateway.feed import RedisFeed
from streamer.gateway.hub import Hub
from streamer.gateway.metrics import GatewayMetrics
from streamer.gateway.openapi import openapi_document
from streamer.gateway.records import (
    FUND_ENTRY,
    LevelUpdate,
    level_from_hash,
    parse_directory_entry,
    parse_levels_payload,
)
from streamer.keys import KeyLayout


def make_app() -> Gateway:
    hub, metrics = Hub(), GatewayMetrics()
    feed = RedisFeed("redis://127.0.0.1:1/0", None, KeyLayout("p"), hub, metrics)
    return Gateway(GatewaySettings(), hub, feed, metrics, (), set())


def test_every_route_is_in_the_openapi_document_and_nothing_else() -> None:
    app = build_app(make_app())
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        and not route.resource.canonical.startswith("/static")
    }  # fmt: skip
    document = openapi_document()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == documented
    assert document["openapi"].startswith("3.1")
    for path, item in document["paths"].items():
        for operation in item.values():
            assert (operation["summary"] and "200" in operation["responses"]) or "101" in (
                operation["responses"]
            ), path
            names = [p["name"] for p in operation.get("parameters", [])]
            assert ("{id}" in path) == ("id" in names), path


def test_event_ids_round_trip_and_garbage_is_ignored() -> None:
    seqs = {"US500": 123, "US500.TR": 77}
    text = encode_event_id(seqs)
    assert text == "US500:123,US500.TR:77"
    assert decode_event_id(text) == seqs
    assert decode_event_id("x:1,garbage,:5,y:-3,z:12345678901234567890,w:4") == {"x": 1, "w": 4}
    assert decode_event_id(None) == {} and decode_event_id("") == {}
    assert encode_event_id({f"S{n}": n for n in range(501)}) is None  # too long to be an id


def update(series: str, seq: int) -> LevelUpdate:
    return LevelUpdate(series, seq, seq * 1000, b'{"index":"%s","seq":%d}' % (series.encode(), seq))


async def test_a_client_that_never_drains_holds_one_update_per_series() -> None:
    hub = Hub()
    metrics = GatewayMetrics()
    client = ClientStream(("A", "B"), rate=4.0, transport="sse", metrics=metrics)
    hub.attach(client, {})
    for seq in range(1, 10_001):
        hub.publish([update("A", seq), update("B", seq), update("C", seq)])
    assert client.pending == 3  # A, B and the status; C is not followed
    sent: list[list[Event]] = []

    async def send(events: Sequence[Event], event_id: str | None) -> None:
        sent.append(list(events))

    task = asyncio.create_task(client.run(send))
    await asyncio.sleep(0.05)
    task.cancel()
    (first,) = sent
    assert [e.kind for e in first] == ["status", "level", "level"]
    assert [e.data for e in first[1:]] == [update("A", 10_000).raw, update("B", 10_000).raw]
    assert client.sent_seq == {"A": 10_000, "B": 10_000}
    metrics.flush()
    assert metrics.registry.get_sample_value("streamer_gateway_conflated_total") == 2 * 9_999


def test_the_hub_keeps_the_newest_and_resume_skips_what_the_client_has() -> None:
    hub = Hub()
    hub.publish([update("A", 5), update("B", 3)])
    hub.publish([update("A", 4)])  # older: ignored
    assert hub.latest["A"].seq == 5
    client = ClientStream(("A", "B"), rate=4.0, transport="sse", metrics=GatewayMetrics())
    hub.attach(client, {"A": 5, "B": 2})
    assert client.pending == 2  # the status and B (A is current)
    assert client.sent_seq == {"A": 5}
    hub.detach(client)
    hub.publish([update("B", 9)])
    assert client.pending == 2  # detached: nothing more arrives


def test_parsers_skip_what_they_cannot_read() -> None:
    good = b'{"index":"A","seq":1,"ts":5,"level":1.5}'
    updates, bad = parse_levels_payload(b"[" + good + b',{"index":3},17]')
    assert [(u.series, u.seq, u.raw) for u in updates] == [("A", 1, good)] and bad == 2
    assert parse_levels_payload(b"[[[[" * 5000) == ([], 1)
    assert parse_levels_payload(good)[0][0].raw == good
    fields = {"schema": "2", "level": "101.5", "divisor": "0.5", "ts": "7", "ts_ms": "0",
              "source_ts": "6", "source_ts_ms": "0", "seq": "3", "prev_close": "",
              "change": "", "change_pct": "", "stale": "0", "coverage": "1.0"}  # fmt: skip
    level = level_from_hash("A", fields)
    assert level is not None and level.seq == 3
    assert level.raw.startswith(b'{"schema":2,"level":101.5,') and b'"prev_close":null' in level.raw
    assert level_from_hash("A", {**fields, "level": "nan"}) is None
    assert level_from_hash("A", {**fields, "seq": "x"}) is None
    assert level_from_hash("A", {}) is None


def test_funds_on_the_channel_and_in_the_directory_are_skipped_not_bad() -> None:
    fund = b'{"schema":2,"kind":"fund","inav":10.0,"tracks":"A","ts":5,"seq":1,"fund":"F"}'
    good = b'{"index":"A","seq":1,"ts":5,"level":1.5}'
    updates, bad = parse_levels_payload(b"[" + fund + b"," + good + b"]")
    assert [u.series for u in updates] == ["A"] and bad == 0
    assert parse_directory_entry("F", b'{"kind":"fund","id":"F"}') is FUND_ENTRY
    assert parse_directory_entry("F", b'{"kind":"other"}') is None


async def test_the_rate_limit_sends_the_newest_value_at_most_rate_per_second() -> None:
    metrics = GatewayMetrics()
    client = ClientStream(("A",), rate=10.0, transport="sse", metrics=metrics)
    sent: list[int] = []

    async def send(events: Sequence[Event], event_id: str | None) -> None:
        sent.extend(int(e.data.split(b'"seq":')[1].rstrip(b"}")) for e in events
                    if e.kind == "level")  # fmt: skip

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(client.run(send))
    start = loop.time()
    for seq in range(1, 201):  # far faster than 10 a second
        client.offer(update("A", seq))
        await asyncio.sleep(0.002)
    elapsed = loop.time() - start
    async with asyncio.timeout(5):
        while not sent or sent[-1] != 200:  # noqa: ASYNC110 - the writer task sends
            await asyncio.sleep(0.01)
    task.cancel()
    # The bound holds however slow the machine: a slower run only sends fewer.
    assert len(sent) <= 10.0 * (loop.time() - start) + 2 + 1
    assert len(sent) < 200 and elapsed > 0
    assert sent == sorted(sent) and sent[-1] == 200  # newest values, in order, the last one too
