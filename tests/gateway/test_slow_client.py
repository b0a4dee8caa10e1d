"""A client that stops reading: the gateway's memory stays bounded, the other clients keep
getting every newest value, and the stuck client is dropped after the write timeout.

Levels are pushed straight onto the levels channel, each padded to 64 KB (the gateway forwards
a level's bytes as published and reads only its index, seq and ts), so that the stuck client's
socket buffers fill in seconds instead of hours.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import ServiceConfig
from tests.gateway.conftest import GatewayProcess, gateway_section
from tests.gateway.sse import open_stream
from tests.integration.harness import metric, scrape

PAD = "x" * 65_536
PUBLISH_EVERY_S = 0.02
RSS_GROWTH_LIMIT = 64 * 1024 * 1024  # socket buffers and a few padded messages, not a queue


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return gateway_section(write_timeout_s=1.0, max_rate=50.0)


def padded_level(seq: int) -> bytes:
    message = {"schema": 2, "level": float(seq), "ts": seq, "ts_ms": 0, "seq": seq}
    return json.dumps({**message, "index": "PX3", "pad": PAD}).encode()


def stuck_client(url: str) -> socket.socket:
    """Asks for the stream, then never reads (a small receive buffer fills sooner)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(b"GET /api/v1/stream?series=PX3&max_rate=50 HTTP/1.1\r\nHost: gateway\r\n\r\n")
    return sock


async def test_a_stuck_client_is_bounded_dropped_and_delays_no_one(
    gateway: GatewayProcess, config: ServiceConfig
) -> None:
    stuck = stuck_client(gateway.url)
    publisher = aioredis.Redis.from_url(config.redis_url)
    published = 0
    received: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            stream = await open_stream(
                session, f"{gateway.url}/api/v1/stream?series=PX3&max_rate=50"
            )

            async def read() -> None:
                while True:
                    level = await stream.next_level()
                    received.append(level["seq"])

            reader = asyncio.create_task(read())
            rss_at_start = gateway.rss_bytes()
            peak_pending = 0
            dropped = 0.0
            seq = 10**9
            async with asyncio.timeout(60):
                while not dropped:
                    for _ in range(25):
                        seq += 1
                        await publisher.publish("test:levels", padded_level(seq))
                        published += 1
                        await asyncio.sleep(PUBLISH_EVERY_S)
                    samples = await asyncio.to_thread(scrape, gateway.url)
                    peak_pending = max(
                        peak_pending, int(metric(samples, "streamer_gateway_client_pending_max"))
                    )
                    dropped = metric(
                        samples, "streamer_gateway_dropped_clients_total", reason="write_timeout"
                    )
            rss_growth = gateway.rss_bytes() - rss_at_start
            # The reader is still served after the drop, and gets the newest value.
            seq += 1
            await publisher.publish("test:levels", padded_level(seq))
            async with asyncio.timeout(10):
                while not received or received[-1] != seq:  # noqa: ASYNC110 - a reader task
                    await asyncio.sleep(0.01)
            reader.cancel()
    finally:
        stuck.close()
        await publisher.aclose()

    assert dropped == 1
    assert peak_pending <= 2  # one slot per followed series (PX3) plus a status
    assert rss_growth < RSS_GROWTH_LIMIT, rss_growth
    # The reading client saw the stream move all along: strictly newer values, most of them
    # (at 50 updates/s it may skip a few under conflation, never fall behind).
    assert received == sorted(set(received))
    assert len(received) > published // 2
