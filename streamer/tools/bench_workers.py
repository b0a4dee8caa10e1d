"""The benchmark's helper processes: a paced publisher, the ceiling consumer, the latency floor.

Both run in their own process (multiprocessing, spawn) so that the process under test never
shares an interpreter, a GIL or a core with the load generator.

Throughput steps send pre-encoded packets from a pool built before the clock starts, so the
publisher costs little more than the ``send`` calls and leaves the CPU to the broker and the
service.  A pool is cyclic: its ticks carry the pool's build time as ``ts`` and no ``seq``
(both optional on the wire), and its prices wander only a few basis points, so it can be
replayed any number of times without a tick ever being out of order or a big move.  The
latency step stamps every message with the time it leaves (``ts``) and a sequence number.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import msgspec
import numpy as np

from streamer.mqtt.codec import (
    connect_packet,
    encode_remaining_length,
    frame_packets,
    publish_packet,
)
from streamer.tools.feed import FeedUniverse, GbmMarket
from streamer.tools.mqtt_publisher import BrokerEndpoint, MqttPublisher
from streamer.tools.pacing import Pacer
from streamer.tools.tick_encoding import BATCH_TOPIC, PayloadFormat, TickEncoder, topic_for
from streamer.wire import DECODERS, FxRate, Tick, encode

_POOL_TICKS = 20_000  # single-tick packets in a pool (cycled)
_POOL_BATCHES = 64  # batch packets in a pool
_POOL_SPAN_S = 60.0  # trading seconds a pool's price path covers: a few basis points of moves
_MAX_BURST = 2_000  # packets per write at most
LOAD_GENERATOR_NICENESS = 10


@dataclass(frozen=True)
class Opening:
    """Every FX pair and one tick per symbol, stamped now."""


@dataclass(frozen=True)
class Throughput:
    rate: float  # ticks per second
    duration_s: float
    batch: int = 1
    fmt: PayloadFormat = "json"
    # Batches partitioned by the producer: (topic, symbol ids) per shard, each batch of one
    # shard's symbols on its topic (empty: every symbol's ticks on ticks/batch).
    partitions: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Latency:
    rate: float  # ticks per second, single-tick JSON messages
    duration_s: float


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Sent:
    ticks: int
    messages: int
    elapsed_s: float
    first_ts: int = 0  # UTC ns of the first message's ts


class BenchPublisher:
    """Executes the controller's commands against one broker connection."""

    def __init__(self, endpoint: BrokerEndpoint, universe: FeedUniverse, seed: int = 7) -> None:
        self.universe = universe
        self.seed = seed
        self.market = GbmMarket(universe, seed=seed)
        self.encoder = TickEncoder(universe.symbols)
        self.publisher = MqttPublisher(endpoint, client_id="streamer-bench-publisher")

    def execute(self, command: Any) -> Sent:
        if isinstance(command, Opening):
            return self.opening()
        if isinstance(command, Throughput):
            return self.throughput(command)
        if isinstance(command, Latency):
            return self.latency(command)
        raise ValueError(f"unknown command {command!r}")

    def opening(self) -> Sent:
        started = time.perf_counter()
        ts = time.time_ns()
        fx = [
            publish_packet(topic_for("fx", pair).encode(), encode(FxRate(pair, rate, ts)))
            for pair, rate in zip(
                self.universe.fx_pairs, self.universe.fx_start.tolist(), strict=True
            )
        ]
        chunk = self.market.opening()
        ticks = self.encoder.single_packets(chunk.symbol_ids, chunk.prices, chunk.seqs, ts, "json")
        self.publisher.publish_packets(fx + ticks)
        return Sent(len(ticks), len(fx) + len(ticks), time.perf_counter() - started, ts)

    def pool(
        self,
        batch: int,
        fmt: PayloadFormat,
        partitions: tuple[tuple[str, tuple[int, ...]], ...] = (),
    ) -> list[bytes]:
        """A cycle of ready PUBLISH packets (see the module doc for why it may repeat)."""
        if partitions and batch > 1:
            return self._partitioned_pool(batch, fmt, partitions)
        market = GbmMarket(self.universe, seed=self.seed)
        n = market.size
        total = max(_POOL_TICKS, n) if batch == 1 else _POOL_BATCHES * batch
        ids = market.round_robin_symbols(0, total)
        chunk = market.step(ids, np.linspace(0.0, _POOL_SPAN_S, total))
        ts = time.time_ns()
        encode_json = msgspec.json.Encoder().encode
        encode_any = encode_json if fmt == "json" else msgspec.msgpack.Encoder().encode
        names = self.universe.symbols
        objects = [
            {"symbol": names[i], "price": p, "ts": ts}
            for i, p in zip(ids.tolist(), chunk.prices.tolist(), strict=True)
        ]
        if batch == 1:
            return [
                publish_packet(topic_for("ticks", obj["symbol"]).encode(), encode_any(obj))
                for obj in objects
            ]
        topic = BATCH_TOPIC.encode()
        return [
            publish_packet(topic, encode_any(objects[i : i + batch]))
            for i in range(0, total - batch + 1, batch)
        ]

    def _partitioned_pool(
        self, batch: int, fmt: PayloadFormat, partitions: tuple[tuple[str, tuple[int, ...]], ...]
    ) -> list[bytes]:
        """Batches of each partition's symbols on its own topic, the partitions taking turns
        in proportion to their sizes (so each shard gets its share of the rate)."""
        market = GbmMarket(self.universe, seed=self.seed)
        encode_any = (msgspec.json.Encoder() if fmt == "json" else msgspec.msgpack.Encoder()).encode
        names = self.universe.symbols
        ts = time.time_ns()
        sizes = np.array([len(ids) for _, ids in partitions], dtype=np.float64)
        per_partition = np.maximum(1, np.round(_POOL_BATCHES * sizes / sizes.sum())).astype(int)
        queues: list[list[bytes]] = []
        for (topic, symbol_ids), count in zip(partitions, per_partition.tolist(), strict=True):
            members = np.asarray(symbol_ids, dtype=np.int64)
            total = count * batch
            ids = members[np.arange(total) % len(members)]
            chunk = market.step(ids, np.linspace(0.0, _POOL_SPAN_S, total))
            objects = [
                {"symbol": names[i], "price": p, "ts": ts}
                for i, p in zip(ids.tolist(), chunk.prices.tolist(), strict=True)
            ]
            raw_topic = topic.encode()
            queues.append(
                [
                    publish_packet(raw_topic, encode_any(objects[i : i + batch]))
                    for i in range(0, total, batch)
                ]
            )
        # Interleave: packet k of a partition with n packets goes out at position k / n.
        order = sorted(
            ((k / len(q), p) for p, q in enumerate(queues) for k in range(len(q))),
        )
        cursors = [0] * len(queues)
        out = []
        for _, p in order:
            out.append(queues[p][cursors[p]])
            cursors[p] += 1
        return out

    def throughput(self, command: Throughput) -> Sent:
        pool = self.pool(command.batch, command.fmt, command.partitions)
        cursor = 0

        def send(due: int) -> None:
            nonlocal cursor
            burst: list[bytes] = []
            while len(burst) < due:
                take = min(due - len(burst), len(pool) - cursor)
                burst.extend(pool[cursor : cursor + take])
                cursor = (cursor + take) % len(pool)
            self.publisher.publish_packets(burst)

        sent, elapsed = _paced(command.rate / command.batch, command.duration_s, send)
        return Sent(sent * command.batch, sent, elapsed)

    def latency(self, command: Latency) -> Sent:
        # The whole price path is drawn before the clock starts, so each send only stamps and
        # encodes: a load generator that steps a GBM per wake-up spent most of a core on it,
        # and on a small machine that core is taken from the process under test.
        total = int(command.rate * command.duration_s) + _MAX_BURST
        ids = self.market.random_symbols(total)
        path = self.market.step(ids, np.linspace(0.0, command.duration_s, total))
        cursor = 0
        first_ts = time.time_ns()

        def send(due: int) -> None:
            nonlocal cursor
            window = slice(cursor, cursor + due)
            cursor += due
            self.publisher.publish_packets(
                self.encoder.single_packets(
                    ids[window], path.prices[window], path.seqs[window], time.time_ns(), "json"
                )
            )

        sent, elapsed = _paced(command.rate, command.duration_s, send)
        return Sent(sent, sent, elapsed, first_ts)


def _paced(rate: float, duration_s: float, send: Callable[[int], None]) -> tuple[int, float]:
    """Call ``send(n)`` with the messages due at ``rate`` for ``duration_s``, in bursts of at
    most _MAX_BURST; returns (messages sent, seconds taken)."""
    pacer = Pacer(rate, max_lag_s=0.25)
    sent = 0
    deadline = pacer.started + duration_s
    while time.perf_counter() < deadline:
        due = min(pacer.due(), _MAX_BURST)
        if due == 0:
            pacer.wait()
            continue
        send(due)
        pacer.release(due)
        sent += due
    return sent, time.perf_counter() - pacer.started


def publisher_process(conn: Connection, endpoint: BrokerEndpoint, universe: FeedUniverse) -> None:
    """Process entry point: connect, say ``ready``, then answer each command with ``Sent``."""
    # The load generator yields the CPU to the system under test (service, broker, Redis):
    # on a small machine it would otherwise preempt them and its own scheduling would show
    # up as their latency.  Its achieved rate is measured, so a starved publisher shows.
    os.nice(LOAD_GENERATOR_NICENESS)
    worker = BenchPublisher(endpoint, universe)
    try:
        worker.publisher.connect()
    except Exception as exc:
        conn.send(exc)
        return
    conn.send("ready")
    try:
        while True:
            command = conn.recv()
            if isinstance(command, Quit):
                break
            try:
                conn.send(worker.execute(command))
            except Exception as exc:
                conn.send(exc)
    finally:
        worker.publisher.close()


def ceiling_consumer_process(
    endpoint: BrokerEndpoint, received: Synchronized[int], ready: Event, stop: Event
) -> None:
    """The ceiling: a paho-mqtt callback consumer that only receives and decodes ticks."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    decode = DECODERS["tick"].decode
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="streamer-bench-ceiling")
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set()

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.subscribe("ticks/#", qos=1)  # as the service subscribes

    def on_subscribe(c: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        ready.set()

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        received.value += len(decode(message.payload).messages)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        stop.wait()
    finally:
        client.loop_stop()
        client.disconnect()


def latency_floor_process(
    endpoint: BrokerEndpoint, redis_port: int, channel: str, ready: Event, stop: Event
) -> None:
    """The latency floor: the least a Python service can do between the broker and Redis.

    Subscribes to ``ticks/#`` over a bare asyncio protocol (uvloop), frames the packets as the
    service does, decodes each tick and at once PUBLISHes ``{"index": "floor", "source_ts":
    ts}`` to ``channel``: no engine, no script, no hash or stream.  Its tick-to-subscriber
    latency is what the machine, the broker and Redis cost before any index arithmetic.
    """
    import asyncio

    import uvloop

    decode = msgspec.json.Decoder(Tick).decode
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel.encode())

    class RedisSide(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:  # the PUBLISH replies: ignored
            pass

    class BrokerSide(asyncio.Protocol):
        def __init__(self, redis: RedisSide) -> None:
            self.redis = redis
            self.buffer = bytearray()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            writer: Any = transport
            client_id = "streamer-bench-floor"
            writer.write(connect_packet(client_id, endpoint.username, endpoint.password))
            topic = b"ticks/#"
            body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
            writer.write(b"\x82" + encode_remaining_length(len(body)) + body)

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            framed = frame_packets(self.buffer, 1 << 20, 0)
            if b"\x90\x03" in framed.passthrough:  # SUBACK
                ready.set()
            out = []
            for _, payload, _, _ in framed.messages:
                tick = decode(payload)
                body = b'{"index":"floor","source_ts":%d}' % (tick.ts or time.time_ns())
                out.append(head + b"$%d\r\n%s\r\n" % (len(body), body))
            if out:
                self.redis.transport.write(b"".join(out))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, redis = await loop.create_connection(RedisSide, "127.0.0.1", redis_port)
        await loop.create_connection(lambda: BrokerSide(redis), endpoint.host, endpoint.port)
        await loop.run_in_executor(None, stop.wait)

    uvloop.run(main())
