"""The lean QoS 0 publisher against a real mosquitto: delivery, credentials, reconnects."""

from __future__ import annotations

import time

import pytest

from streamer.localservices import LocalMosquitto
from streamer.tools.mqtt_publisher import BrokerEndpoint, BrokerError, MqttPublisher
from tests.tools.support import Subscriber, wait_until


def test_messages_arrive_in_order(mosquitto: LocalMosquitto) -> None:
    with (
        Subscriber(mosquitto.host, mosquitto.port, "ticks/#") as sub,
        MqttPublisher(BrokerEndpoint.from_url(mosquitto.url)) as publisher,
    ):
        publisher.publish_many((b"ticks/A", str(i).encode()) for i in range(5_000))
        publisher.publish("ticks/B", b"last")
        wait_until(lambda: len(sub.messages) == 5_001, what="5,001 messages")
    assert [p for _, p in sub.messages[:5_000]] == [str(i).encode() for i in range(5_000)]
    assert sub.messages[-1] == ("ticks/B", b"last")


def test_credentials_from_the_url_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalMosquitto(username="desk", password="s3cret") as broker:
        with MqttPublisher(BrokerEndpoint.from_url(broker.authenticated_url)) as publisher:
            publisher.publish("ticks/A", b"1")
        monkeypatch.setenv("STREAMER_MQTT_PASSWORD", "s3cret")
        endpoint = BrokerEndpoint.from_environment(f"mqtt://desk@127.0.0.1:{broker.port}")
        assert "s3cret" not in repr(endpoint) and "s3cret" not in endpoint.display
        MqttPublisher(endpoint).connect().close()
        wrong = BrokerEndpoint.from_url(f"mqtt://desk:wrong@127.0.0.1:{broker.port}")
        with pytest.raises(BrokerError, match="refused"):
            MqttPublisher(wrong).connect()


def test_an_unreachable_broker_is_a_clear_error() -> None:
    from streamer.localservices import free_port

    endpoint = BrokerEndpoint.from_url(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerError, match="cannot connect to broker"):
        MqttPublisher(endpoint).connect()


def test_reconnects_after_the_broker_restarts(mosquitto: LocalMosquitto) -> None:
    publisher = MqttPublisher(BrokerEndpoint.from_url(mosquitto.url), reconnect=True).connect()
    try:
        mosquitto.restart()
        # The first write after the restart may vanish into the dead socket's buffer; the
        # next ones see the reset and reconnect.
        deadline = time.monotonic() + 10
        while publisher.stats.reconnects == 0 and time.monotonic() < deadline:
            publisher.publish("ticks/A", b"lost?")
            time.sleep(0.02)
        assert publisher.stats.reconnects == 1
        with Subscriber(mosquitto.host, mosquitto.port, "ticks/#") as sub:
            publisher.publish("ticks/A", b"after")
            wait_until(lambda: ("ticks/A", b"after") in sub.messages, what="a message")
    finally:
        publisher.close()
