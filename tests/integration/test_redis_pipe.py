"""The pipelined Redis connection and pipelined publishing, against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from streamer.endpoints import parse_redis_url
from streamer.engine import SeriesLevel
from streamer.keys import KeyLayout
from streamer.localservices import LocalRedis
from streamer.publish import RedisPublisher
from streamer.redis_pipe import CommandPipe, PipeError, ReplyError, pack
from tests.integration.harness import Store


def level(series: str, value: float) -> SeriesLevel:
    return SeriesLevel(series, value, 0.5, 1, 100.0, value - 100.0, value - 100.0, 0, 1.0, 3)


def pipe_to(server: LocalRedis, password: str | None = None) -> CommandPipe:
    return CommandPipe(parse_redis_url(server.url, password))


async def test_replies_match_commands_in_order_and_an_error_fails_only_its_command(
    redis_server: LocalRedis,
) -> None:
    pipe = pipe_to(redis_server)
    await pipe.open()
    # Written back to back, before any reply: the replies come back in the same order.
    replies = [await pipe.send(pack(b"INCR", b"n")) for _ in range(50)]
    bad = await pipe.send(pack(b"HSET", b"n", b"field"))  # wrong arity: an error reply
    after = await pipe.send(pack(b"GET", b"n"))
    assert [(await r).value for r in replies] == list(range(1, 51))
    with pytest.raises(ReplyError, match="wrong number of arguments"):
        await bad
    assert (await after).value == b"50"
    assert pipe.is_open  # an error reply answers one command; the connection goes on
    await pipe.close()


async def test_a_request_of_many_commands_resolves_with_its_last_reply(
    redis_server: LocalRedis,
) -> None:
    pipe = pipe_to(redis_server)
    await pipe.open()
    transaction = b"".join(
        [pack(b"MULTI"), pack(b"SET", b"a", b"1"), pack(b"INCR", b"a"), pack(b"EXEC")]
    )
    reply = await pipe.call(transaction, replies=4)
    assert reply.value == [b"OK", 2]
    # An error queued inside MULTI (unknown command) aborts the transaction: the first error
    # is the request's error.
    bad = b"".join([pack(b"MULTI"), pack(b"NOSUCHCOMMAND"), pack(b"EXEC")])
    with pytest.raises(ReplyError, match="unknown command"):
        await pipe.call(bad, replies=3)
    assert (await pipe.call(pack(b"GET", b"a"))).value == b"2"
    await pipe.close()


async def test_a_lost_connection_fails_every_command_in_flight(redis_server: LocalRedis) -> None:
    pipe = pipe_to(redis_server)
    await pipe.open()
    blocked = [await pipe.send(pack(b"BLPOP", b"never", b"0")) for _ in range(3)]
    await asyncio.to_thread(redis_server.kill)
    for reply in blocked:
        with pytest.raises(PipeError):
            await reply
    assert not pipe.is_open
    with pytest.raises(PipeError):
        await pipe.send(pack(b"PING"))
    with pytest.raises(PipeError):
        await pipe.open()  # refused while Redis is down: an error, not a hang
    await asyncio.to_thread(redis_server.start)
    await pipe.open()  # a fresh connection
    assert (await pipe.call(pack(b"PING"))).value == b"PONG"
    await pipe.close()


async def test_the_handshake_authenticates_and_selects_the_database() -> None:
    with LocalRedis(password="s3cret") as server:
        wrong = pipe_to(server, "nope")
        with pytest.raises(PipeError, match=r"WRONGPASS|invalid"):
            await wrong.open()
        pipe = CommandPipe(parse_redis_url(server.url.rsplit("/", 1)[0] + "/3", "s3cret"))
        await pipe.open()
        await pipe.call(pack(b"SET", b"k", b"v"))
        store = Store(server.url.rsplit("/", 1)[0] + "/3")
        store.client.connection_pool.connection_kwargs["password"] = "s3cret"
        assert store.client.get("k") == "v"
        await pipe.close()


async def test_cycles_in_flight_are_applied_in_order(redis_server: LocalRedis) -> None:
    publisher = RedisPublisher(parse_redis_url(redis_server.url), KeyLayout("p"), 1000)
    sent = [await publisher.send([level("X", 100.0 + i)]) for i in range(40)]
    received = [(await s.acks[-1]).received_ns for s in sent]
    assert received == sorted(received)
    store = Store(redis_server.url)
    assert store.hget("p:index:X", "level") == "139.0"
    assert store.hget("p:index:X", "seq") == "40"
    await publisher.close()
