"""The gateway's REST API and streams against a running service (real broker and Redis)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import redis

from streamer.localservices import LocalRedis
from tests.conftest import ServiceConfig
from tests.gateway.conftest import GatewayProcess
from tests.gateway.sse import SseStream, open_stream
from tests.integration.harness import (
    Feed,
    ServiceProcess,
    http_get,
    metric,
    promtool,
    scrape,
    wait_for,
)


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A blocking GET (also from async tests: the gateway is another process)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def level_of(gateway: GatewayProcess, series: str) -> float | None:
    status, body = get_json(f"{gateway.url}/api/v1/series/{series}")
    if status != 200 or body["latest"] is None:
        return None
    level: float = body["latest"]["level"]
    return level


def wait_level(gateway: GatewayProcess, series: str, level: float) -> None:
    wait_for(lambda: level_of(gateway, series) == level, what=f"{series} at {level}")


def test_directory_latest_levels_and_unknown_series(gateway: GatewayProcess) -> None:
    wait_level(gateway, "PX3", 120.0)
    status, body = get_json(f"{gateway.url}/api/v1/series")
    assert status == 200
    assert body["state"] == "live"
    by_id = {item["id"]: item for item in body["series"]}
    assert set(by_id) == {"PX3", "CAP2"}
    assert by_id["PX3"]["directory"]["name"] == "Three price-weighted"
    assert by_id["PX3"]["directory"]["keys"]["index"] == "test:index:PX3"
    assert by_id["CAP2"]["latest"]["level"] == (10.0 * 1e6 + 40.0 * 2e6 * 0.5) / 1e6
    assert by_id["PX3"]["latest"]["index"] == "PX3"
    assert isinstance(by_id["PX3"]["latest"]["ts_ms"], int)

    for bad in ("NOPE", "PX3%20", "..", "a" * 100):
        status, body = get_json(f"{gateway.url}/api/v1/series/{bad}")
        assert status == 404, bad
        assert "error" in body
    status, body = get_json(f"{gateway.url}/api/v1/nothing-here")
    assert status == 404 and "error" in body


def test_history_bars_and_bad_ranges(
    gateway: GatewayProcess, service: ServiceProcess, feed: Feed, config: ServiceConfig
) -> None:
    wait_level(gateway, "PX3", 120.0)
    feed.tick("AAA", 11.0)
    wait_level(gateway, "PX3", 122.0)
    status, body = get_json(f"{gateway.url}/api/v1/series/PX3/history")
    assert status == 200
    levels = [entry["level"] for entry in body["entries"]]
    assert levels[-2:] == [120.0, 122.0]
    assert all(isinstance(e["seq"], int) and e["id"] for e in body["entries"])
    first_ms = int(body["entries"][-1]["id"].split("-")[0])
    status, body = get_json(f"{gateway.url}/api/v1/series/PX3/history?from={first_ms}&limit=1")
    assert status == 200 and [e["level"] for e in body["entries"]] == [122.0]

    # A bar is written when its minute is over, and at shutdown.
    assert service.terminate() == 0
    status, body = get_json(f"{gateway.url}/api/v1/series/PX3/bars")
    assert status == 200
    # One bar, or two when the two levels fell on either side of a minute's end.
    bars = body["bars"]
    assert len(bars) in (1, 2), bars
    assert all(bar["t"] % 60_000 == 0 for bar in bars)
    assert [bar["t"] - bars[0]["t"] for bar in bars] == [60_000 * k for k in range(len(bars))]
    assert (bars[0]["o"], bars[-1]["c"], sum(bar["n"] for bar in bars)) == (120.0, 122.0, 2)
    assert max(bar["h"] for bar in bars) == 122.0 and min(bar["l"] for bar in bars) == 120.0

    for query, problem in (
        ("from=abc", "from must be a non-negative integer"),
        ("to=-5", "to must be a non-negative integer"),
        ("from=10&to=5", "is after to"),
        ("limit=0", "limit must be at least 1"),
        ("limit=1000001", "limit must be at most"),
        ("from=99999999999999999999", "from must be"),
    ):
        for kind in ("history", "bars"):
            status, body = get_json(f"{gateway.url}/api/v1/series/PX3/{kind}?{query}")
            assert status == 400, (kind, query)
            assert problem in body["error"], body
    status, _ = get_json(f"{gateway.url}/api/v1/series/NOPE/history")
    assert status == 404


async def test_stream_snapshot_first_then_live_updates(gateway: GatewayProcess, feed: Feed) -> None:
    await asyncio.to_thread(wait_level, gateway, "CAP2", 50.0)
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, f"{gateway.url}/api/v1/stream?series=PX3,CAP2")
        status = await stream.next()
        assert (status.kind, status.data) == ("status", {"state": "live"})
        snapshot: dict[str, float] = {}
        while len(snapshot) < 2:
            level = await stream.next_level()
            snapshot[level["index"]] = level["level"]
        assert snapshot == {"PX3": 120.0, "CAP2": 50.0}
        assert stream.last_id is not None
        assert set(stream.last_id.split(",")) == {
            f"PX3:{_seq(gateway, 'PX3')}",
            f"CAP2:{_seq(gateway, 'CAP2')}",
        }
        feed.tick("BBB", 25.0)
        level = await stream.next_level()
        assert (level["index"], level["level"]) == ("PX3", 130.0)
        assert level["schema"] == 2 and isinstance(level["ts_ms"], int)
        # Nothing else moves: heartbeats keep the stream visibly alive.
        event = await stream.next()
        assert event.kind == "heartbeat" and event.data["state"] == "live"


def _seq(gateway: GatewayProcess, series: str) -> int:
    _, body = get_json(f"{gateway.url}/api/v1/series/{series}")
    seq: int = body["latest"]["seq"]
    return seq


async def test_stream_refuses_bad_requests(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for query, status in (
            ("series=NOPE", 404),
            ("series=PX3,bad%20id", 404),
            ("max_rate=0", 400),
            ("max_rate=abc", 400),
            ("max_rate=nan", 400),
            ("max_rate=1e9", 400),
        ):
            for path in ("stream", "ws"):
                async with session.get(f"{gateway.url}/api/v1/{path}?{query}") as response:
                    assert response.status == status, (path, query)
                    assert "error" in await response.json()
    samples = scrape(gateway.url)
    assert metric(samples, "streamer_gateway_refused_requests_total", reason="bad_request") == 8


async def test_websocket_speaks_the_same_protocol(gateway: GatewayProcess, feed: Feed) -> None:
    await asyncio.to_thread(wait_level, gateway, "PX3", 120.0)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/api/v1/ws?series=PX3&max_rate=10") as ws,
    ):
        first = json.loads(await ws.receive_str(timeout=10))
        assert first == {"event": "status", "data": {"state": "live"}}
        snapshot = json.loads(await ws.receive_str(timeout=10))
        assert snapshot["event"] == "level" and snapshot["data"]["level"] == 120.0
        assert snapshot["id"] == f"PX3:{snapshot['data']['seq']}"
        feed.tick("CCC", 35.0)
        while True:
            frame = json.loads(await ws.receive_str(timeout=10))
            if frame["event"] == "level":
                break
        assert frame["data"]["level"] == 130.0


async def test_last_event_id_resumes_with_the_series_that_moved(
    gateway: GatewayProcess, feed: Feed
) -> None:
    await asyncio.to_thread(wait_level, gateway, "CAP2", 50.0)
    url = f"{gateway.url}/api/v1/stream?series=PX3,CAP2"
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, url)
        seen: set[str] = set()
        while len(seen) < 2:
            seen.add((await stream.next_level())["index"])
        last_id = stream.last_id
        assert last_id is not None
        stream.response.close()

        # While away, only CAP2 moves (DDD is in CAP2 alone).
        feed.tick("DDD", 60.0)
        await asyncio.to_thread(wait_level, gateway, "CAP2", 70.0)

        resumed = await open_stream(session, url, headers={"Last-Event-ID": last_id})
        assert (await resumed.next()).kind == "status"
        gap_fill = await resumed.next_level()
        assert (gap_fill["index"], gap_fill["level"]) == ("CAP2", 70.0)
        # PX3 had not moved: it is not sent again; its next event is its next move (CCC is
        # in PX3 alone).
        feed.tick("CCC", 40.0)
        following = await resumed.next_level()
        assert (following["index"], following["level"]) == ("PX3", 140.0)
        assert resumed.last_id is not None
        assert f"CAP2:{gap_fill['seq']}" in resumed.last_id.split(",")

        # A garbled id is no error: the client simply gets the whole snapshot.
        fresh = await open_stream(session, url, headers={"Last-Event-ID": "garbage,,::x"})
        await fresh.next()
        got = {(await fresh.next_level())["index"] for _ in range(2)}
        assert got == {"PX3", "CAP2"}


async def test_redis_restart_is_seen_as_disconnected_then_live(
    gateway: GatewayProcess, redis_server: LocalRedis, feed: Feed
) -> None:
    await asyncio.to_thread(wait_level, gateway, "PX3", 120.0)
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, f"{gateway.url}/api/v1/stream?series=PX3")
        assert (await stream.next()).data == {"state": "live"}
        await stream.next_level()
        await asyncio.to_thread(redis_server.restart)
        states = await _next_states(stream, 2)
        assert states == ["disconnected", "live"]
        # Levels flow again (the service republishes after Redis comes back).
        feed.tick("AAA", 30.0)
        while (await stream.next_level())["level"] != 160.0:
            pass
    samples = scrape(gateway.url)
    assert metric(samples, "streamer_gateway_redis_reconnects_total") >= 1


async def _next_states(stream: SseStream, count: int) -> list[str]:
    states: list[str] = []
    while len(states) < count:
        event = await stream.next(within=20)
        if event.kind == "status":
            states.append(event.data["state"])
    return states


def test_garbage_on_the_channel_is_counted_not_fatal(
    gateway: GatewayProcess, config: ServiceConfig, feed: Feed
) -> None:
    wait_level(gateway, "PX3", 120.0)
    client = redis.Redis.from_url(config.redis_url)
    for payload in (b"not json", b"[1,2,{}]", b'{"index": 5}', b"\xff\xfe", b"[" * 10_000):
        client.publish("test:levels", payload)
    client.hset("test:index:PX3", "level", "oops")  # a broken hash is skipped at load too
    feed.tick("AAA", 12.0)
    wait_level(gateway, "PX3", 124.0)
    samples = scrape(gateway.url)
    assert metric(samples, "streamer_gateway_bad_records_total", source="channel") >= 6
    status, _ = get_json(f"{gateway.url}/healthz")
    assert status == 200


def test_metrics_name_clients_fanout_and_lag_and_pass_promtool(
    gateway: GatewayProcess, feed: Feed
) -> None:
    wait_level(gateway, "PX3", 120.0)

    async def while_streaming() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with aiohttp.ClientSession() as session:
            stream = await open_stream(session, f"{gateway.url}/api/v1/stream?series=PX3")
            await stream.next_level()
            return await asyncio.to_thread(scrape, gateway.url)

    samples = asyncio.run(while_streaming())
    assert metric(samples, "streamer_gateway_clients", transport="sse") == 1
    assert metric(samples, "streamer_gateway_redis_connected") == 1
    status, text = http_get(gateway.url + "/metrics")
    assert status == 200
    for name in (
        "streamer_gateway_fanout_messages_total", "streamer_gateway_lag_seconds_bucket",
        "streamer_gateway_conflated_total", "streamer_gateway_dropped_clients_total",
        "streamer_gateway_pending_updates", "streamer_gateway_redis_messages_total",
    ):  # fmt: skip
        assert name in text, name
    tool = promtool()
    if tool:
        check = subprocess.run(
            [tool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
