"""The local-services fixtures: servers answer, restart on the same port, configs load."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion

from streamer.config import load_settings
from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import ServiceConfigFactory

WAIT_S = 10.0


def test_redis_restarts_on_the_same_port(redis_server: LocalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    port = redis_server.port
    redis_server.restart(graceful=False)
    assert redis_server.port == port
    fresh = redis.Redis.from_url(redis_server.url)
    assert fresh.ping()
    assert fresh.get("k") is None  # nothing persisted


def test_password_protected_services() -> None:
    with LocalRedis(password="s3cret") as server:
        assert redis.Redis.from_url(server.authenticated_url).ping()
        try:
            redis.Redis.from_url(server.url).set("k", "v")
        except redis.AuthenticationError:
            pass
        else:  # pragma: no cover
            raise AssertionError("unauthenticated write accepted")
    with LocalMosquitto(username="feed", password="pw") as broker:
        assert broker.is_running()
        assert broker.authenticated_url.startswith("mqtt://feed:pw@127.0.0.1:")


def test_service_config_loads(service_config: ServiceConfigFactory) -> None:
    config = service_config(publish={"interval_ms": 250})
    settings = load_settings(config.path)
    assert [d.id for d in settings.indices] == sorted(config.index_ids)
    assert settings.publish.interval_ms == 250
    assert settings.redis.prefix == config.prefix


def _session(broker: LocalMosquitto, client_id: str) -> mqtt.Client:
    """A connected persistent-session (clean_session=False) client."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(WAIT_S)
    return client


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_persistent_broker_delivers_a_queued_qos1_message_after_a_crash() -> None:
    with LocalMosquitto(persistent=True) as broker:
        subscriber = _session(broker, "svc")
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *_: subscribed.set()
        subscriber.subscribe("control/#", qos=1)
        assert subscribed.wait(WAIT_S)
        _close(subscriber)  # offline: the broker queues QoS 1 messages for the session

        publisher = _session(broker, "operator")
        payload = f"action-{time.time_ns()}".encode()
        publisher.publish("control/actions", payload, qos=1).wait_for_publish(WAIT_S)
        _close(publisher)
        # The PUBACK goes out before the save, which follows in the same event-loop pass
        # (autosave_on_changes): a SIGKILL in that fraction of a millisecond would lose the
        # message, one after the save cannot.  No graceful stop, no SIGUSR1, no timer.
        deadline = time.monotonic() + 5.0
        while not (broker.database_path.exists() and payload in broker.database_path.read_bytes()):
            assert time.monotonic() < deadline, "the queued message was not saved"
            time.sleep(0.01)

        port = broker.port
        broker.kill()
        broker.start()
        assert broker.port == port

        received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        present: queue.Queue[bool] = queue.Queue()
        again = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="svc", clean_session=False,
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        again.on_connect = lambda _c, _u, flags, _r, _p: present.put(flags.session_present)
        again.on_message = lambda _c, _u, msg: received.put((msg.topic, bytes(msg.payload)))
        again.connect(broker.host, broker.port)
        again.loop_start()
        assert present.get(timeout=WAIT_S), "the session did not survive the crash"
        assert received.get(timeout=WAIT_S) == ("control/actions", payload)
        _close(again)


def test_non_persistent_broker_forgets_sessions() -> None:
    with LocalMosquitto() as broker:
        _close(_session(broker, "svc"))
        broker.restart()
        present: queue.Queue[bool] = queue.Queue()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="svc", clean_session=False,
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        client.on_connect = lambda _c, _u, flags, _r, _p: present.put(flags.session_present)
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert present.get(timeout=WAIT_S) is False
        _close(client)


def test_appendonly_redis_keeps_a_key_through_kill_and_restart() -> None:
    with LocalRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("streamer:state:test", "v1")
        # The write reaches the AOF (the kernel) before the reply: a process crash keeps it.
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).get("streamer:state:test") == b"v1"
        server.restart(graceful=False)
        assert redis.Redis.from_url(server.url).get("streamer:state:test") == b"v1"
