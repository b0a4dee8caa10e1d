"""`streamer run` end to end: ticks over MQTT move the Redis hash, channel and stream.

Indices (tests/conftest.py): PX3 = (AAA + BBB + CCC) / 0.5, CAP2 = (AAA * 1e6 + DDD * 1e6) / 1e6.
"""

from __future__ import annotations

import threading
import time

import pytest

from streamer import outputs
from streamer.localservices import LocalMosquitto
from streamer.outputs import parse_levels_message
from tests.conftest import ServiceConfig
from tests.integration.harness import Feed, ServiceProcess, Store, wait_for

LEVEL_FIELDS = set(outputs.LEVEL_FIELDS)


def hash_level(client: Store, prefix: str, index: str) -> float | None:
    value = client.hget(f"{prefix}:index:{index}", "level")
    return float(value) if value else None


def test_json_and_msgpack_single_and_batched_ticks_reach_hash_channel_and_stream(
    config: ServiceConfig, service: ServiceProcess, mosquitto: LocalMosquitto
) -> None:
    client = Store(config.redis_url)
    received: list[dict[str, object]] = []
    lock = threading.Lock()
    pubsub = client.pubsub()

    def on_message(message: dict[str, object]) -> None:
        with lock:
            received.extend(parse_levels_message(str(message["data"])))

    pubsub.subscribe(**{f"{config.prefix}:levels": on_message})
    listener = pubsub.run_in_thread(sleep_time=0.01, daemon=True)
    feed = Feed(mosquitto.port)
    try:

        def expect(px3: float, cap2: float) -> None:
            for index, want in (("PX3", px3), ("CAP2", cap2)):

                def reached(index: str = index, want: float = want) -> bool:
                    return hash_level(client, config.prefix, index) == pytest.approx(want)

                wait_for(reached, what=f"{index} level {want}")

        # JSON, one tick per message: every constituent gets a first price.
        for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
            feed.tick(symbol, price)
        expect(px3=(100 + 50 + 25) / 0.5, cap2=100 + 10)
        # MessagePack, one tick.
        feed.tick("AAA", 102.0, fmt="msgpack")
        expect(px3=(102 + 50 + 25) / 0.5, cap2=102 + 10)
        # JSON batch.
        feed.ticks([{"symbol": "BBB", "price": 51.0}, {"symbol": "CCC", "price": 26.0}])
        expect(px3=(102 + 51 + 26) / 0.5, cap2=102 + 10)
        # MessagePack batch, with producer timestamps and sequence numbers.
        feed.ticks(
            [
                {"symbol": "AAA", "price": 101.0, "ts": time.time_ns(), "seq": 1},
                {"symbol": "DDD", "price": 10.5, "ts": time.time_ns(), "seq": 1},
            ],
            fmt="msgpack",
        )
        expect(px3=(101 + 51 + 26) / 0.5, cap2=101 + 10.5)

        fields = client.hgetall(f"{config.prefix}:index:PX3")
        assert set(fields) == LEVEL_FIELDS
        assert float(fields["divisor"]) == pytest.approx(0.5)
        assert int(fields["stale"]) == 0
        assert float(fields["coverage"]) == pytest.approx(1.0)

        def channel_px3() -> list[float]:
            with lock:
                return [float(m["level"]) for m in received if m["index"] == "PX3"]  # type: ignore[arg-type]

        wait_for(lambda: len(channel_px3()) >= 4, what="four PX3 messages on the channel")
        assert channel_px3()[-4:] == pytest.approx([350.0, 354.0, 358.0, 356.0])
        with lock:
            last = [m for m in received if m["index"] == "PX3"][-1]
        assert set(last) == LEVEL_FIELDS | {"index"}
        assert last["seq"] == int(fields["seq"])

        history = client.xrange(f"{config.prefix}:history:PX3")
        assert [float(f["level"]) for _, f in history][-4:] == pytest.approx(
            [350.0, 354.0, 358.0, 356.0]
        )
        seqs = [int(f["seq"]) for _, f in history]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert set(history[-1][1]) == LEVEL_FIELDS
    finally:
        feed.close()
        listener.stop()
        listener.join(timeout=2)
        pubsub.close()
