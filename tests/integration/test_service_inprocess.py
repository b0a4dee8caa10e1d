"""The Service in-process against real servers: credentials, timers, readiness, draining."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamer.config import Settings, load_settings
from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.service import Service
from tests.conftest import ServiceConfigFactory, write_service_config
from tests.integration.harness import Feed, Store, eventually


def seed(feed: Feed) -> None:
    for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
        feed.tick(symbol, price)


async def publish_seed_prices(
    settings: Settings, connect_feed: Callable[[], Feed], store_url: str
) -> None:
    """Run the service until the seed prices' PX3 level is in Redis, then stop it."""
    service = Service(settings, registry=CollectorRegistry(), handle_signals=False)
    task = asyncio.create_task(service.run())
    await eventually(lambda: service.mqtt.connected.is_set() and service.publish_loop.connected)
    feed = connect_feed()
    seed(feed)
    feed.close()
    client = Store(store_url)
    await eventually(lambda: client.hget("test:index:PX3", "level") == "350.0")
    service.stop()
    await task


async def test_credentials_come_from_the_environment_and_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mqtt_secret, redis_secret = "mq-Secret-871", "rd-Secret-314"
    with (
        LocalMosquitto(username="streamer", password=mqtt_secret) as broker,
        LocalRedis(password=redis_secret) as store,
    ):
        config = write_service_config(
            tmp_path, f"mqtt://streamer@127.0.0.1:{broker.port}", store.url
        )
        settings = load_settings(
            config.path,
            environ={
                "STREAMER_MQTT_PASSWORD": mqtt_secret,
                "STREAMER_REDIS_PASSWORD": redis_secret,
            },
        )
        caplog.set_level(logging.DEBUG)
        await publish_seed_prices(
            settings,
            lambda: Feed(broker.port, username="streamer", password=mqtt_secret),
            store.authenticated_url,
        )
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "mqtt connected" in text
    assert mqtt_secret not in text and redis_secret not in text


async def test_interval_publishing_due_actions_and_a_draining_stop(
    service_config: ServiceConfigFactory, mosquitto: LocalMosquitto, redis_server: LocalRedis
) -> None:
    config = service_config(publish={"interval_ms": 100})
    service = Service(
        load_settings(config.path), registry=CollectorRegistry(), handle_signals=False
    )
    task = asyncio.create_task(service.run())
    client = Store(redis_server.url)
    await eventually(lambda: service.mqtt.connected.is_set() and service.publish_loop.connected)
    assert service.readiness() == ["no level yet: CAP2,PX3"]
    feed = Feed(mosquitto.port)
    seed(feed)
    await eventually(lambda: not service.readiness())
    # With a fixed interval every series is published on each tick of the timer.
    await eventually(lambda: client.xlen("test:history:CAP2") >= 3)
    # An action effective shortly in the future applies on the timer, without any tick.
    effective = time.time_ns() + 200_000_000
    feed.control(
        {
            "action": "special_dividend",
            "symbol": "CCC",
            "amount": 5.0,
            "id": "sd-ccc",
            "effective": effective,
        }
    )
    await eventually(lambda: client.xlen("test:actions") == 1)
    await eventually(lambda: float(client.hget("test:index:PX3", "divisor") or 0) != 0.5)
    divisor = float(client.hget("test:index:PX3", "divisor") or 0)
    assert divisor == pytest.approx(0.5 * 170 / 175)
    # Ticks received just before stop() are applied and published by the final cycle.
    feed.tick("AAA", 101.0)
    feed.close()
    await eventually(lambda: len(service.inbox) or service.pipeline.ticks_applied >= 5)
    service.stop()
    async with asyncio.timeout(5):
        await task
    assert float(client.hget("test:index:PX3", "level") or 0) == pytest.approx(
        (101 + 50 + 20) / divisor
    )


async def test_rediss_publishes_over_tls(
    tmp_path: Path, mosquitto: LocalMosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``rediss://`` URL: the service's probes and its pipelined publish connection both
    speak TLS to a TLS-only Redis, trusting its certificate through SSL_CERT_FILE."""
    with LocalRedis(tls=True) as store:
        monkeypatch.setenv("SSL_CERT_FILE", str(store.ca_file))
        config = write_service_config(tmp_path, mosquitto.url, store.url)
        assert config.redis_url.startswith("rediss://")
        await publish_seed_prices(
            load_settings(config.path), lambda: Feed(mosquitto.port), store.url
        )
