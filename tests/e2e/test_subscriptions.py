"""`streamer run` with [mqtt] tick_topics = "constituents": the broker routes each shard only
its own symbols' ticks, and the subscriptions follow add and delete."""

from __future__ import annotations

import time

import pytest

from streamer.localservices import LocalMosquitto
from tests.conftest import ServiceConfig, ServiceConfigFactory
from tests.integration.harness import Feed, ServiceProcess, Store, metric, scrape, wait_for


@pytest.fixture
def config(service_config: ServiceConfigFactory) -> ServiceConfig:
    return service_config(mqtt={"tick_topics": "constituents"})


def level(store: Store, prefix: str, index: str) -> float | None:
    value = store.hget(f"{prefix}:index:{index}", "level")
    return float(value) if value else None


def unknown_symbols(config: ServiceConfig) -> float:
    return metric(
        scrape(config.metrics_url), "streamer_ticks_total", outcome="rejected",
        reason="unknown_symbol",
    )  # fmt: skip


def accepted(config: ServiceConfig) -> float:
    return metric(
        scrape(config.metrics_url), "streamer_ticks_total", outcome="accepted", reason="ok"
    )


def test_a_shard_receives_only_its_constituents_ticks(
    config: ServiceConfig, service: ServiceProcess, mosquitto: LocalMosquitto
) -> None:
    store = Store(config.redis_url)
    feed = Feed(mosquitto.port)
    try:
        for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
            feed.tick(symbol, price)
        wait_for(lambda: level(store, config.prefix, "PX3") == pytest.approx(350.0), what="PX3")
        # Another shard's symbol: the broker does not send it here, so it is not counted as
        # an unknown symbol (it never arrives).
        for k in range(20):
            feed.tick("ZZZ", 10.0 + k)
        feed.tick("AAA", 102.0)  # after them on the same connection: they went first
        wait_for(lambda: level(store, config.prefix, "PX3") == pytest.approx(354.0), what="354")
        assert unknown_symbols(config) == 0
        # So an unknown symbol here is a fault the alert may count.
        samples = scrape(config.metrics_url)
        assert samples[("streamer_tick_wildcard_subscribed", ())] == 0
        # Added to PX3: subscribed, its ticks move the index.
        feed.control({"action": "add", "id": "add-z", "index": "PX3", "symbol": "ZZZ",
                      "price": 20.0})  # fmt: skip
        wait_for(lambda: store.xlen(f"{config.prefix}:actions") >= 1, what="the add")

        # The add keeps the level (354) with divisor 0.5 * (177 + 20) / 177; ZZZ at 30 then
        # gives (177 + 30) / that divisor.
        with_zzz = (177 + 30) / (0.5 * 197 / 177)

        def moved_by_zzz() -> bool:
            feed.tick("ZZZ", 30.0)  # until the subscription is in place
            time.sleep(0.05)
            return level(store, config.prefix, "PX3") == pytest.approx(with_zzz, rel=1e-9)

        wait_for(moved_by_zzz, what="a ZZZ tick to move PX3")
        # Deleted again: unsubscribed, so its ticks stop arriving at all.
        feed.control({"action": "delete", "id": "del-z", "index": "PX3", "symbol": "ZZZ"})
        wait_for(lambda: store.xlen(f"{config.prefix}:actions") >= 2, what="the delete")
        marker = iter(range(1, 1000))

        def unsubscribed() -> bool:
            """Five ZZZ ticks and an AAA marker behind them: only the marker arrives."""
            before = accepted(config)
            for k in range(5):
                feed.tick("ZZZ", 40.0 + k)
            price = 102.0 + next(marker) / 100
            feed.tick("AAA", price)
            divisor = float(store.hget(f"{config.prefix}:index:PX3", "divisor") or "nan")
            expected = (price + 50 + 25) / divisor
            wait_for(
                lambda: level(store, config.prefix, "PX3") == pytest.approx(expected, rel=1e-9),
                what="the marker",
            )
            return accepted(config) - before == 1

        wait_for(unsubscribed, what="ZZZ no longer delivered")
    finally:
        feed.close()
