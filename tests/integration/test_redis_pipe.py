"""The pipelined Redis connection and pipelined publishing, against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from streamer.config import RedisSettings
from streamer.engine import SeriesLevel
from streamer.localservices import LocalRedis
from streamer.publish import RedisPublisher
from streamer.redis_pipe import CommandPipe, PipeError, pack
from streamer.service import redis_client
from tests.integration.harness import Store


def level(series: str, value: float) -> SeriesLevel:
    return SeriesLevel(series, value, 0.5, 1, 100.0, value - 100.0, value - 100.0, 0, 1.0, 3)


async def test_replies_match_commands_in_order_and_an_error_fails_only_its_command(
    redis_server: LocalRedis,
) -> None:
    client = redis_client(RedisSettings(url=redis_server.url))
    pipe = CommandPipe(client)
    await pipe.open()
    # Written back to back, before any reply: the replies come back in the same order.
    replies = [await pipe.send(pack(b"INCR", b"n")) for _ in range(50)]
    bad = await pipe.send(pack(b"HSET", b"n", b"field"))  # wrong arity: an error reply
    after = await pipe.send(pack(b"GET", b"n"))
    assert [(await r).value for r in replies] == list(range(1, 51))
    with pytest.raises(PipeError, match="wrong number of arguments"):
        await bad
    assert (await after).value == b"50"
    assert pipe.is_open  # an error reply answers one command; the connection goes on
    await pipe.close()
    await client.aclose()


async def test_a_lost_connection_fails_every_command_in_flight(redis_server: LocalRedis) -> None:
    client = redis_client(RedisSettings(url=redis_server.url))
    pipe = CommandPipe(client)
    await pipe.open()
    blocked = [await pipe.send(pack(b"BLPOP", b"never", b"0")) for _ in range(3)]
    await asyncio.to_thread(redis_server.kill)
    for reply in blocked:
        with pytest.raises(PipeError):
            await reply
    assert not pipe.is_open
    with pytest.raises(PipeError):
        await pipe.send(pack(b"PING"))
    await asyncio.to_thread(redis_server.start)
    await pipe.open()  # a fresh connection
    assert (await pipe.call(pack(b"PING"))).value in (b"PONG", "PONG")
    await pipe.close()
    await client.aclose()


async def test_cycles_in_flight_are_applied_in_order(redis_server: LocalRedis) -> None:
    client = redis_client(RedisSettings(url=redis_server.url))
    publisher = RedisPublisher(client, "p", 1000)
    acks = [await publisher.send([level("X", 100.0 + i)]) for i in range(40)]
    received = [(await ack).received_ns for ack in acks]
    assert received == sorted(received)
    store = Store(redis_server.url)
    assert store.hget("p:index:X", "level") == "139.0"
    assert store.hget("p:index:X", "seq") == "40"
    history = [float(fields["level"]) for _, fields in store.xrange("p:history:X")]
    assert history == [100.0 + i for i in range(40)]
    await publisher.close()
    await client.aclose()
