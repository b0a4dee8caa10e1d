"""The compose stack's broker and Redis configs, run for real: deploy/mosquitto (password file,
ACL) and deploy/redis/users.acl, with the dev passwords of deploy/compose/secrets."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.deploy.stack import DeployMosquitto, DeployRedis
from tests.deploy.support import secret

MessageQueue = queue.Queue[tuple[str, bytes]]
WAIT_S = 10.0


@pytest.fixture
def broker() -> Iterator[DeployMosquitto]:
    with DeployMosquitto() as server:
        yield server


@pytest.fixture
def redis_acl() -> Iterator[DeployRedis]:
    with DeployRedis() as server:
        yield server


def connect(
    broker: DeployMosquitto, user: str | None, password: str | None
) -> tuple[mqtt.Client, ReasonCode]:
    """A connected (or refused) client, and the broker's CONNACK reason."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if user is not None:
        client.username_pw_set(user, password)
    answers: queue.Queue[ReasonCode] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.put(reason)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    reason = answers.get(timeout=WAIT_S)
    return client, reason


def subscriber(
    broker: DeployMosquitto, user: str, topics: list[str]
) -> tuple[mqtt.Client, MessageQueue, list[int]]:
    """A client subscribed to ``topics``; its received messages and SUBACK codes."""
    client, reason = connect(broker, user, secret(f"mqtt_{user}_password"))
    assert not reason.is_failure, f"{user} refused: {reason}"
    received: MessageQueue = queue.Queue()
    granted: queue.Queue[list[int]] = queue.Queue()
    client.on_message = lambda _c, _u, msg: received.put((msg.topic, bytes(msg.payload)))
    client.on_subscribe = lambda _c, _u, _m, codes, _p: granted.put([c.value for c in codes])
    client.subscribe([(topic, 1) for topic in topics])
    return client, received, granted.get(timeout=WAIT_S)


def close(*clients: mqtt.Client) -> None:
    for client in clients:
        client.disconnect()
        client.loop_stop()


def publish_in_order(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=WAIT_S)


def drain_until(received: MessageQueue, marker: bytes) -> list[tuple[str, bytes]]:
    """Messages up to and including ``marker``: one publisher's messages arrive in order, so
    whatever the broker let through before the marker is in this list."""
    seen = []
    while True:
        topic, payload = received.get(timeout=WAIT_S)
        seen.append((topic, payload))
        if payload == marker:
            return seen


def test_anonymous_and_wrong_passwords_are_refused(broker: DeployMosquitto) -> None:
    for user, password in ((None, None), ("feed", "not-the-password"), ("nobody", "x")):
        client, reason = connect(broker, user, password)
        close(client)
        assert reason.is_failure, f"{user!r} was let in"


def test_feed_publishes_prices_which_the_service_user_reads(broker: DeployMosquitto) -> None:
    service, received, granted = subscriber(
        broker, "streamer", ["ticks/#", "fx/#", "reference/#", "control/#"]
    )
    assert all(code < 0x80 for code in granted), granted
    feed, reason = connect(broker, "feed", secret("mqtt_feed_password"))
    assert not reason.is_failure
    publish_in_order(
        feed,
        [
            ("ticks/AAPL", b'{"symbol":"AAPL","price":1.0}'),
            ("fx/EURUSD", b'{"pair":"EURUSD","rate":1.1}'),
            ("reference/DEMO30", b'{"index":"DEMO30","level":1.0}'),
            ("control/actions", b"from-feed"),  # denied: only the service user may
            ("ticks/MARK", b"marker"),
        ],
    )
    topics = [topic for topic, _ in drain_until(received, b"marker")]
    assert topics == ["ticks/AAPL", "fx/EURUSD", "reference/DEMO30", "ticks/MARK"]
    close(feed, service)


def test_only_the_service_user_publishes_control(broker: DeployMosquitto) -> None:
    watcher, received, _ = subscriber(broker, "streamer", ["control/#"])
    operator, reason = connect(broker, "streamer", secret("mqtt_streamer_password"))
    assert not reason.is_failure
    publish_in_order(
        operator,
        [("control/actions", b"split"), ("ticks/AAPL", b"ignored"), ("control/actions", b"marker")],
    )
    assert drain_until(received, b"marker") == [
        ("control/actions", b"split"),
        ("control/actions", b"marker"),
    ]
    close(watcher, operator)


def test_feed_cannot_read(broker: DeployMosquitto) -> None:
    # mosquitto grants the subscription but delivers nothing the ACL does not let `feed` read.
    feed, feed_received, _ = subscriber(broker, "feed", ["ticks/#"])
    service, service_received, _ = subscriber(broker, "streamer", ["ticks/#"])
    publisher, _ = connect(broker, "feed", secret("mqtt_feed_password"))
    publish_in_order(publisher, [("ticks/AAPL", b"marker")])
    drain_until(service_received, b"marker")
    # The broker fanned the message out to every subscriber before the service user got it; a
    # SUBACK on the feed's connection comes after anything queued there before it.
    acknowledged: queue.Queue[bool] = queue.Queue()
    feed.on_subscribe = lambda *_: acknowledged.put(True)
    feed.subscribe("fx/#", qos=1)
    assert acknowledged.get(timeout=WAIT_S)
    assert feed_received.empty()
    close(feed, service, publisher)


def redis_client(server: DeployRedis, username: str | None, password: str | None) -> redis.Redis:
    # No retries: a refused login is the answer under test, not a fault to ride out.
    return redis.Redis(
        host=server.host,
        port=server.port,
        username=username,
        password=password,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )


def test_redis_acl_confines_the_service_user_to_its_prefix(redis_acl: DeployRedis) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(redis_acl, None, None).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(redis_acl, "streamer", "wrong").ping()
    client = redis_client(redis_acl, "streamer", secret("redis_password"))
    assert client.ping()
    client.hset("streamer:index:DEMO30", mapping={"level": "1.0"})
    client.xadd("streamer:history:DEMO30", {"level": "1.0"}, maxlen=10, approximate=True)
    client.publish("streamer:levels", "{}")
    assert client.hget("streamer:index:DEMO30", "level") == "1.0"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere:key", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
