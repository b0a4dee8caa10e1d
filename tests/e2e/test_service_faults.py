"""`streamer run` end to end: the broker or Redis dies and comes back mid-stream."""

from __future__ import annotations

import pytest
import redis

from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import ServiceConfig
from tests.integration.harness import Feed, ServiceProcess, Store, metric, scrape, wait_for


def px3(store: Store, prefix: str) -> float | None:
    try:
        value = store.hget(f"{prefix}:index:PX3", "level")
    except redis.ConnectionError:
        return None
    return float(value) if value else None


def seed(feed: Feed) -> None:
    for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
        feed.tick(symbol, price)


def test_broker_killed_and_restarted_the_service_reconnects_and_publishes(
    config: ServiceConfig, service: ServiceProcess, mosquitto: LocalMosquitto
) -> None:
    store = Store(config.redis_url)
    feed = Feed(mosquitto.port)
    seed(feed)
    wait_for(lambda: px3(store, config.prefix) == pytest.approx(350.0), what="PX3 at 350")
    feed.close()

    mosquitto.restart(graceful=False)
    wait_for(
        lambda: metric(scrape(config.metrics_url), "streamer_mqtt_reconnects_total") >= 1,
        what="a reconnect",
    )
    service.wait_connected()
    feed = Feed(mosquitto.port)
    try:
        feed.tick("AAA", 104.0)
        wait_for(lambda: px3(store, config.prefix) == pytest.approx(358.0), what="PX3 at 358")
    finally:
        feed.close()
    events = [e["event"] for e in service.log_events()]
    assert "mqtt disconnected" in events


def test_redis_killed_and_restarted_the_latest_levels_are_published(
    config: ServiceConfig,
    service: ServiceProcess,
    mosquitto: LocalMosquitto,
    redis_server: LocalRedis,
) -> None:
    store = Store(config.redis_url)
    feed = Feed(mosquitto.port)
    try:
        seed(feed)
        wait_for(lambda: px3(store, config.prefix) == pytest.approx(350.0), what="PX3 at 350")

        redis_server.stop(graceful=False)
        feed.tick("AAA", 102.0)  # computed while Redis is away
        wait_for(
            lambda: metric(scrape(config.metrics_url), "streamer_redis_errors_total") >= 1,
            what="a Redis error",
        )
        assert service.process.poll() is None
        redis_server.start()  # empty: nothing persisted
        wait_for(lambda: px3(store, config.prefix) == pytest.approx(354.0), what="PX3 at 354")
        fields = store.hgetall(f"{config.prefix}:index:CAP2")
        assert float(fields["level"]) == pytest.approx(112.0)
        # The latest levels only: one history entry per series, no replay of the outage.
        assert store.xlen(f"{config.prefix}:history:PX3") == 1

        feed.tick("BBB", 51.0)
        wait_for(lambda: px3(store, config.prefix) == pytest.approx(356.0), what="PX3 at 356")
    finally:
        feed.close()
