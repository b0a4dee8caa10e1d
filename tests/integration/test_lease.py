"""The writer lease against a real redis-server: one holder, a new epoch per acquisition, and
every write of a writer whose lease was taken is refused."""

from __future__ import annotations

import asyncio

import pytest

from streamer.endpoints import parse_redis_url
from streamer.engine import SeriesLevel
from streamer.engine.results import LevelColumns
from streamer.keys import KeyLayout
from streamer.lease import LeaseState
from streamer.localservices import LocalRedis
from streamer.metrics import Metrics
from streamer.publish import FencedError, Outbox, PublishLoop, RedisPublisher
from streamer.redis_pipe import CommandPipe, pack
from tests.integration.harness import Store, eventually


def level(series: str, value: float) -> SeriesLevel:
    return SeriesLevel(series, value, 0.5, 1, 100.0, value - 100.0, value - 100.0, 0, 1.0, 3)


def writer(server: LocalRedis) -> RedisPublisher:
    return RedisPublisher(parse_redis_url(server.url), KeyLayout("p", "s1"), 100)


async def test_one_holder_at_a_time_and_a_new_epoch_per_acquisition(
    redis_server: LocalRedis,
) -> None:
    a, b = writer(redis_server), writer(redis_server)
    epoch, value, _ = await a.acquire_lease("a", 5_000)
    assert (epoch, value) == (1, b"a|1")
    epoch_b, held_by, remaining = await b.acquire_lease("b", 5_000)
    assert (epoch_b, held_by) == (0, b"a|1") and 0 < remaining <= 5_000
    # The same holder again (a restarted replica): taken back at once, with a new epoch.
    assert (await a.acquire_lease("a", 5_000))[:2] == (2, b"a|2")
    assert not await a.renew_lease(b"a|1", 5_000)  # the old incarnation cannot renew
    assert await a.renew_lease(b"a|2", 5_000)
    await a.release_lease(b"a|2")
    assert (await b.acquire_lease("b", 5_000))[:2] == (3, b"b|3")
    await a.close()
    await b.close()


async def test_a_writer_whose_lease_was_taken_has_every_write_refused(
    redis_server: LocalRedis,
) -> None:
    old, new = writer(redis_server), writer(redis_server)
    _, value, _ = await old.acquire_lease("old", 200)
    old.fence = value
    await old.publish([level("X", 1.0)])
    store = Store(redis_server.url)
    assert store.hget("p:index:X", "level") == "1.0"
    # The old writer pauses past its TTL; the new one takes the lease and writes.
    await asyncio.sleep(0.3)
    _, new_value, _ = await new.acquire_lease("new", 5_000)
    new.fence = new_value
    await new.publish([level("X", 2.0)])
    with pytest.raises(FencedError):
        await old.publish([level("X", 99.0)])
    assert store.hget("p:index:X", "level") == "2.0"
    assert store.hget("p:index:X", "seq") == "1"  # the new writer's own first publish
    await old.close()
    await new.close()


async def test_a_lease_that_changes_between_the_check_and_the_write_refuses_the_write(
    redis_server: LocalRedis,
) -> None:
    """WATCH: a lease taken after the writer read it (and before its EXEC) fails the EXEC."""
    store = Store(redis_server.url)
    store.client.set("k", "mine")
    pipe = CommandPipe(parse_redis_url(redis_server.url))
    await pipe.open()
    guard = await pipe.call(pack(b"WATCH", b"k") + pack(b"GET", b"k"), 2)
    assert guard.value == b"mine"
    store.client.set("k", "theirs")  # another replica, in between
    reply = await pipe.call(pack(b"MULTI") + pack(b"SET", b"out", b"stale") + pack(b"EXEC"), 3)
    assert reply.value is None and store.client.get("out") is None
    await pipe.close()


async def test_two_loops_one_leader_and_the_standby_takes_over_when_it_stops(
    redis_server: LocalRedis,
) -> None:
    current = {"X": level("X", 1.0)}
    loops = []
    for name in ("a", "b"):
        lease = LeaseState(holder=name, ttl_ns=600_000_000)
        loops.append(
            PublishLoop(
                writer(redis_server),
                lambda wanted: LevelColumns.of_rows(
                    [lv for s, lv in current.items() if wanted is None or s in wanted]
                ),
                Outbox(),
                Metrics(),
                lease=lease,
            )
        )
    tasks = [asyncio.create_task(c) for loop in loops for c in (loop.run(), loop.run_lease())]
    try:
        await eventually(lambda: sorted(loop.role for loop in loops) == ["leader", "standby"])
        leader = next(loop for loop in loops if loop.role == "leader")
        standby = next(loop for loop in loops if loop is not leader)
        store = Store(redis_server.url)
        await eventually(lambda: store.hget("p:index:X", "level") == "1.0")
        # The leader stops renewing (as if it were paused): the standby takes over after
        # the TTL, continues the seq, and publishes what changed.
        for task in tasks[:2] if leader is loops[0] else tasks[2:]:
            task.cancel()
        # The takeover bound is the TTL plus a second (with a second of slack here).
        await eventually(lambda: standby.role == "leader", within=0.6 + 1.0 + 1.0)
        seq = int(store.hget("p:index:X", "seq") or 0)
        current["X"] = level("X", 2.0)
        standby.outbox.add(["X"])
        await eventually(lambda: store.hget("p:index:X", "level") == "2.0")
        assert int(store.hget("p:index:X", "seq") or 0) > seq
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in loops:
            await loop.publisher.close()
