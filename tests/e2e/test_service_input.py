"""`streamer run` end to end: corporate actions on the control topic, and bad input.

Indices (tests/conftest.py): PX3 = (AAA + BBB + CCC) / 0.5, CAP2 = (AAA * 1e6 + DDD * 1e6) / 1e6.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from streamer.localservices import LocalMosquitto
from tests.conftest import ServiceConfig, ServiceConfigFactory
from tests.integration.harness import Feed, ServiceProcess, Store, metric, scrape, wait_for


@pytest.fixture
def config(service_config: ServiceConfigFactory) -> ServiceConfig:
    return service_config(
        mqtt={
            "max_payload_bytes": 4096,
            "topics": ["ticks/#", "fx/#", "control/#", "reference/#", "misc/#"],
        }
    )


@pytest.fixture
def feed(mosquitto: LocalMosquitto) -> Iterator[Feed]:
    publisher = Feed(mosquitto.port)
    yield publisher
    publisher.close()


@pytest.fixture
def store(config: ServiceConfig) -> Store:
    return Store(config.redis_url)


def level_of(store: Store, prefix: str, index: str) -> dict[str, str]:
    return store.hgetall(f"{prefix}:index:{index}")


def wait_level(store: Store, prefix: str, index: str, want: float) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        fields = level_of(store, prefix, index)
        return fields if fields and float(fields["level"]) == pytest.approx(want) else None

    return wait_for(probe, what=f"{index} at {want}")


def seed(feed: Feed, store: Store, prefix: str) -> None:
    for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
        feed.tick(symbol, price)
    wait_level(store, prefix, "PX3", 350.0)
    wait_level(store, prefix, "CAP2", 110.0)


def test_split_and_special_dividend_adjust_the_divisor_once(
    config: ServiceConfig, service: ServiceProcess, feed: Feed, store: Store
) -> None:
    prefix = config.prefix
    seed(feed, store, prefix)
    split = {"action": "split", "symbol": "AAA", "ratio": 2.0, "id": "ca-split-aaa"}
    feed.control(split)
    feed.control(split)  # the same id again: applied once
    # PX3 is price-weighted: AAA 100 -> 50, so divisor 0.5 * 125 / 175 keeps the level at 350.
    split_divisor = 0.5 * 125.0 / 175.0
    wait_for(
        lambda: float(level_of(store, prefix, "PX3")["divisor"]) == pytest.approx(split_divisor),
        what="PX3 divisor after the split",
    )
    assert float(level_of(store, prefix, "PX3")["level"]) == pytest.approx(350.0)
    feed.tick("AAA", 51.0)
    wait_level(store, prefix, "PX3", (51 + 50 + 25) / split_divisor)
    # CAP2 is cap-weighted: price halves and shares double, no divisor change.
    wait_level(store, prefix, "CAP2", 51 * 2 + 10)
    assert float(level_of(store, prefix, "CAP2")["divisor"]) == pytest.approx(1e6)

    dividend = {"action": "special_dividend", "symbol": "BBB", "amount": 5.0, "id": "ca-sd-bbb"}
    feed.control(dividend)
    feed.control(dividend)
    dividend_divisor = split_divisor * (51 + 45 + 25) / (51 + 50 + 25)
    wait_for(
        lambda: float(level_of(store, prefix, "PX3")["divisor"]) == pytest.approx(dividend_divisor),
        what="PX3 divisor after the special dividend",
    )
    assert float(level_of(store, prefix, "PX3")["level"]) == pytest.approx(352.8)

    def actions() -> list[dict[str, str]]:
        return [fields for _, fields in store.xrange(f"{prefix}:actions")]

    wait_for(lambda: len(actions()) >= 3, what="three audit records")
    records = actions()
    by_key = {(r["id"], r["index"]): r for r in records}
    assert len(records) == len(by_key) == 3  # split: PX3 + CAP2; dividend: PX3 only
    px3_split = by_key["ca-split-aaa", "PX3"]
    assert px3_split["action"] == "split" and px3_split["symbol"] == "AAA"
    assert float(px3_split["divisor_before"]) == pytest.approx(0.5)
    assert float(px3_split["divisor_after"]) == pytest.approx(split_divisor)
    assert float(px3_split["level_before"]) == pytest.approx(float(px3_split["level_after"]))
    cap2_split = by_key["ca-split-aaa", "CAP2"]
    assert float(cap2_split["divisor_after"]) == pytest.approx(float(cap2_split["divisor_before"]))
    px3_dividend = by_key["ca-sd-bbb", "PX3"]
    assert float(px3_dividend["divisor_after"]) == pytest.approx(dividend_divisor)


def test_every_kind_of_bad_input_is_counted_and_dropped(
    config: ServiceConfig, service: ServiceProcess, feed: Feed, store: Store
) -> None:
    prefix = config.prefix
    seed(feed, store, prefix)
    msgpack = msgspec.msgpack.encode
    feed.send("ticks/AAA", b"\x00\xff\xfe garbage")  # not JSON, not MessagePack
    feed.send("ticks/AAA", b'{"symbol": "AAA", "price": "high"}')  # wrong type
    feed.send("ticks/AAA", msgpack({"symbol": "AAA", "price": float("nan")}))  # NaN
    feed.send("ticks/AAA", b'{"symbol": "AAA", "price": -5.0}')  # negative
    feed.send("ticks/ZZZ", b'{"symbol": "ZZZ", "price": 10.0}')  # unknown symbol
    feed.send("ticks/AAA", b'{"symbol": "AAA", "price": 101.0, "pad": "' + b"x" * 5000 + b'"}')
    feed.send("misc/news", b'{"symbol": "AAA", "price": 101.0}')  # unknown topic
    feed.tick("BBB", 52.0, seq=10)
    feed.tick("BBB", 99.0, seq=9)  # out of order: seq goes back
    feed.tick("CCC", 26.0)  # a good tick after all of that

    expected = {
        "malformed": 2,
        "bad_price": 2,
        "unknown_symbol": 1,
        "oversize": 1,
        "unknown_topic": 1,
        "out_of_order": 1,
    }

    def counted() -> dict[str, float] | None:
        samples = scrape(config.metrics_url)
        got = {
            reason: metric(samples, "streamer_ticks_total", outcome="rejected", reason=reason)
            for reason in expected
        }
        return got if got == expected else None

    wait_for(counted, what=f"rejections {expected}")
    wait_level(store, prefix, "PX3", (100 + 52 + 26) / 0.5)
    assert float(level_of(store, prefix, "CAP2")["level"]) == pytest.approx(110.0)
    samples = scrape(config.metrics_url)
    assert metric(samples, "streamer_ticks_total", outcome="accepted", reason="ok") == 6
    assert service.process.poll() is None
    warnings = [e for e in service.log_events() if e.get("event") == "malformed payload dropped"]
    assert 1 <= len(warnings) <= 2  # throttled per reason
