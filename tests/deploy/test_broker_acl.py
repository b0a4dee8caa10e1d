"""The compose stack's broker and Redis configs, run for real: deploy/mosquitto (two listeners,
password files, ACL) and deploy/redis/users.acl, with the dev passwords of
deploy/compose/secrets."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

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
# A k8s pod name, as STREAMER_MQTT_CLIENT_ID gives each replica.
SERVICE_CLIENT_ID = "streamer-5d8f7c9b6-x2k4q"


@pytest.fixture
def broker() -> Iterator[DeployMosquitto]:
    with DeployMosquitto() as server:
        yield server


@pytest.fixture
def redis_acl() -> Iterator[DeployRedis]:
    with DeployRedis() as server:
        yield server


def listener_of(broker: DeployMosquitto, user: str | None) -> int:
    """The port a user logs in on: the service's listener for `streamer`, else everyone's."""
    return broker.service_port if user == "streamer" else broker.port


def connect(
    broker: DeployMosquitto,
    user: str | None,
    password: str | None,
    *,
    port: int | None = None,
    client_id: str = "",
    clean_session: bool = True,
    received: MessageQueue | None = None,
) -> tuple[mqtt.Client, ReasonCode]:
    """A connected (or refused) client, and the broker's CONNACK reason; with ``received``,
    messages go there from the start (a resumed session's queue arrives right after CONNACK)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    if user is not None:
        client.username_pw_set(user, password)
    answers: queue.Queue[ReasonCode] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.put(reason)
    if received is not None:
        messages = received
        client.on_message = lambda _c, _u, msg: messages.put((msg.topic, bytes(msg.payload)))
    client.connect(broker.host, port or listener_of(broker, user), keepalive=10)
    client.loop_start()
    reason = answers.get(timeout=WAIT_S)
    return client, reason


def subscriber(
    broker: DeployMosquitto,
    user: str,
    topics: list[str],
    *,
    client_id: str = "",
    clean_session: bool = True,
) -> tuple[mqtt.Client, MessageQueue, list[int]]:
    """A client subscribed to ``topics``; its received messages and SUBACK codes."""
    received: MessageQueue = queue.Queue()
    client, reason = connect(
        broker,
        user,
        secret(f"mqtt_{user}_password"),
        client_id=client_id,
        clean_session=clean_session,
        received=received,
    )
    assert not reason.is_failure, f"{user} refused: {reason}"
    granted: queue.Queue[list[int]] = queue.Queue()
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
    for port in (broker.port, broker.service_port):
        for user, password in ((None, None), ("feed", "not-the-password"), ("nobody", "x")):
            client, reason = connect(broker, user, password, port=port)
            close(client)
            assert reason.is_failure, f"{user!r} was let in on {port}"


def test_each_user_logs_in_on_its_own_listener_only(broker: DeployMosquitto) -> None:
    # The service's listener knows only `streamer`, the other one everybody but `streamer`.
    for user, port in (
        ("feed", broker.service_port),
        ("operator", broker.service_port),
        ("streamer", broker.port),
    ):
        client, reason = connect(broker, user, secret(f"mqtt_{user}_password"), port=port)
        close(client)
        assert reason.is_failure, f"{user} was let in on {port}"


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
            ("control/actions", b"from-feed"),  # denied: only the operator may
            ("ticks/MARK", b"marker"),
        ],
    )
    topics = [topic for topic, _ in drain_until(received, b"marker")]
    assert topics == ["ticks/AAPL", "fx/EURUSD", "reference/DEMO30", "ticks/MARK"]
    close(feed, service)


def test_only_the_operator_publishes_control(broker: DeployMosquitto) -> None:
    watcher, received, _ = subscriber(broker, "streamer", ["control/#", "ticks/#"])
    # The service reads control/ but may not publish it (nor anything else).
    publish_in_order(watcher, [("control/actions", b"from-service")])
    operator, reason = connect(broker, "operator", secret("mqtt_operator_password"))
    assert not reason.is_failure
    publish_in_order(
        operator,
        [("control/actions", b"split"), ("ticks/AAPL", b"denied"), ("control/actions", b"marker")],
    )
    assert drain_until(received, b"marker") == [
        ("control/actions", b"split"),
        ("control/actions", b"marker"),
    ]
    close(watcher, operator)


@pytest.mark.parametrize("user", ["feed", "operator"])
def test_feed_and_operator_cannot_read(broker: DeployMosquitto, user: str) -> None:
    # mosquitto grants the subscription but delivers nothing the ACL does not let them read.
    # One connection per user: on their listener the client id is the username, so a second
    # `feed` connection would replace the first.
    reader, reader_received, _ = subscriber(broker, user, ["ticks/#", "control/#"])
    service, service_received, _ = subscriber(broker, "streamer", ["ticks/#", "control/#"])
    topic = "ticks/AAPL" if user == "feed" else "control/actions"
    publish_in_order(reader, [(topic, b"marker")])
    drain_until(service_received, b"marker")
    # The broker fanned the message out to every subscriber before the service user got it; a
    # SUBACK on the reader's connection comes after anything queued there before it.
    acknowledged: queue.Queue[bool] = queue.Queue()
    reader.on_subscribe = lambda *_: acknowledged.put(True)
    reader.subscribe("fx/#", qos=1)
    assert acknowledged.get(timeout=WAIT_S)
    assert reader_received.empty()
    close(reader, service)


@pytest.mark.parametrize("intruder", ["feed", "operator"])
def test_other_users_cannot_take_over_the_service_session(
    broker: DeployMosquitto, intruder: str
) -> None:
    """Without the listener split any broker user could connect with the service's client id:
    the broker would disconnect the service and hand its persistent session (and the queued
    corporate actions) to the intruder.  On the shared listener the client id is the username."""
    service, received, _ = subscriber(
        broker, "streamer", ["control/#"], client_id=SERVICE_CLIENT_ID, clean_session=False
    )
    dropped = threading.Event()
    service.on_disconnect = lambda *_: dropped.set()

    other, reason = connect(
        broker,
        intruder,
        secret(f"mqtt_{intruder}_password"),
        client_id=SERVICE_CLIENT_ID,
        clean_session=False,
    )
    # Let in, but as client `<intruder>`: a takeover would have closed the service's
    # connection before this CONNACK was sent.
    assert not reason.is_failure
    close(other)
    # The service's connection and subscription still work: an action reaches it.
    operator, _ = connect(broker, "operator", secret("mqtt_operator_password"))
    publish_in_order(operator, [("control/actions", b"after")])
    try:
        seen = drain_until(received, b"after")
    except queue.Empty:
        seen = []
    assert not dropped.is_set(), f"{intruder} disconnected the service by taking its client id"
    assert seen == [("control/actions", b"after")]
    log = broker.log_text()  # mosquitto's stderr is unbuffered
    assert "already connected, closing old connection" not in log
    assert f" as {intruder} (" in log, "the intruder's client id was not its username"
    assert f" as {SERVICE_CLIENT_ID} (" in log  # the service itself
    close(operator, service)


def test_service_replicas_keep_their_own_sessions(broker: DeployMosquitto) -> None:
    # Several replicas log in as `streamer` with distinct client ids (their pod names): the
    # service's listener leaves ids alone, so each keeps its session and gets every action.
    replicas = [
        subscriber(
            broker, "streamer", ["control/#"], client_id=f"streamer-{shard}-0", clean_session=False
        )
        for shard in ("us500", "global")
    ]
    dropped = threading.Event()
    for client, _, _ in replicas:
        client.on_disconnect = lambda *_: dropped.set()
    operator, _ = connect(broker, "operator", secret("mqtt_operator_password"))
    publish_in_order(operator, [("control/actions", b"split")])
    for _, received, _ in replicas:
        assert drain_until(received, b"split") == [("control/actions", b"split")]
    assert not dropped.is_set()
    close(operator, *(client for client, _, _ in replicas))


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


def test_redis_acl_reader_user_reads_and_subscribes_but_never_writes(
    redis_acl: DeployRedis,
) -> None:
    """``streamer-reader``: what consumers and ``streamer gateway`` log in as."""
    writer = redis_client(redis_acl, "streamer", secret("redis_password"))
    writer.hset("streamer:index:DEMO30", mapping={"level": "1.0"})
    writer.xadd("streamer:history:DEMO30", {"level": "1.0"})
    writer.hset("streamer:series", mapping={"DEMO30": "{}"})
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(redis_acl, "streamer-reader", "wrong").ping()
    reader = redis_client(redis_acl, "streamer-reader", secret("redis_reader_password"))
    assert reader.ping()
    assert reader.hget("streamer:index:DEMO30", "level") == "1.0"
    assert reader.hgetall("streamer:series") == {"DEMO30": "{}"}
    assert reader.xlen("streamer:history:DEMO30") == 1 and reader.xrange("streamer:history:DEMO30")
    pubsub = reader.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("streamer:levels")
    pubsub.subscribe("streamer:levels:DEMO30")
    assert drain_subscribe_replies(pubsub) == 2
    writer.publish("streamer:levels", "[]")
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == "[]"
    pubsub.close()
    for write in (
        lambda: reader.hset("streamer:index:DEMO30", "level", "2.0"),
        lambda: reader.xadd("streamer:history:DEMO30", {"level": "2.0"}),
        lambda: reader.delete("streamer:index:DEMO30"),
        lambda: reader.publish("streamer:levels", "forged"),
        lambda: reader.get("elsewhere:key"),
        reader.flushall,
        lambda: reader.config_get("*"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    assert writer.hget("streamer:index:DEMO30", "level") == "1.0"


def drain_subscribe_replies(pubsub: Any) -> int:
    confirmed = 0
    while confirmed < 2:
        message = pubsub.get_message(timeout=5)
        assert message is not None, "no subscribe confirmation"
        confirmed += message["type"] == "subscribe"
    return confirmed
