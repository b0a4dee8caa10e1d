"""The compose broker's durability, run for real with deploy/mosquitto/mosquitto.conf: a
corporate action published at QoS 1 while the service is away survives a broker crash.

What the shipped config guarantees (its comment has the measurements): the database is saved
right after the event-loop pass that queued the action, not at the PUBACK itself, so a crash
in between (a fraction of a millisecond) still loses it.  The tests wait for that save, then
SIGKILL the broker, which is what a crash is; a graceful stop always saves."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import pytest

from tests.deploy.stack import DeployMosquitto, wait_for
from tests.deploy.support import secret
from tests.deploy.test_broker_acl import (
    SERVICE_CLIENT_ID,
    WAIT_S,
    MessageQueue,
    close,
    connect,
    publish_in_order,
    subscriber,
)


@pytest.fixture
def broker() -> Iterator[DeployMosquitto]:
    with DeployMosquitto() as server:
        yield server


def saved(broker: DeployMosquitto, payload: bytes) -> bool | None:
    """True once ``payload`` is in the broker's database on disk."""
    path = broker.database_path
    return True if path.exists() and payload in path.read_bytes() else None


def test_an_acknowledged_action_survives_a_broker_crash(broker: DeployMosquitto) -> None:
    # The service subscribes with a persistent session, then goes away (a restart, say).
    service, _, _ = subscriber(
        broker, "streamer", ["control/#"], client_id=SERVICE_CLIENT_ID, clean_session=False
    )
    close(service)

    operator, _ = connect(broker, "operator", secret("mqtt_operator_password"))
    action = f'{{"action":"split","symbol":"AAPL","ratio":4,"id":"ca-{time.time_ns()}"}}'.encode()
    publish_in_order(operator, [("control/actions", action)])  # returns on the PUBACK
    close(operator)
    # Saved without a graceful stop, SIGUSR1 or the 30-minute default timer: the change
    # (a message queued for an offline session) triggers the save.
    wait_for("the queued action to be saved", lambda: saved(broker, action), timeout_s=5.0)

    broker.kill()  # SIGKILL: nothing is written on the way down
    broker.start()  # same port, same database

    received: MessageQueue = queue.Queue()
    client, reason = connect(
        broker,
        "streamer",
        secret("mqtt_streamer_password"),
        client_id=SERVICE_CLIENT_ID,
        clean_session=False,
        received=received,
    )
    assert not reason.is_failure
    # The session and its subscription came back with the database: no SUBSCRIBE needed.
    assert received.get(timeout=WAIT_S) == ("control/actions", action)
    close(client)


def test_qos0_ticks_are_not_queued_for_an_offline_service(broker: DeployMosquitto) -> None:
    # Why every save is cheap: ticks at QoS 0 are neither queued for an offline session nor
    # counted as changes, so the database holds actions, not a backlog of prices.
    service, _, _ = subscriber(
        broker, "streamer", ["ticks/#", "control/#"], client_id=SERVICE_CLIENT_ID,
        clean_session=False,
    )  # fmt: skip
    close(service)
    feed, _ = connect(broker, "feed", secret("mqtt_feed_password"))
    for i in range(100):
        feed.publish("ticks/AAPL", f"tick-{i}".encode(), qos=0)
    # Acknowledged after the ticks before it on the connection; no one subscribes to fx/.
    publish_in_order(feed, [("fx/MARK", b"mark")])
    operator, _ = connect(broker, "operator", secret("mqtt_operator_password"))
    publish_in_order(operator, [("control/actions", b"marker-action")])
    close(feed, operator)
    wait_for("the action to be saved", lambda: saved(broker, b"marker-action"), timeout_s=5.0)
    assert b"tick-" not in broker.database_path.read_bytes()
