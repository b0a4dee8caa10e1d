"""`streamer run` against a bad day: hostile and retained payloads, a far-future clock, lost
and taken-over broker sessions, wrong credentials, Redis out of memory or read-only, a dead
feed and a backlog.  Real mosquitto and redis-server, the service as a subprocess.

Indices (tests/conftest.py): PX3 = (AAA + BBB + CCC) / 0.5, CAP2 = (AAA * 1e6 + DDD * 1e6) / 1e6.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
import redis

from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.mqtt.codec import publish_packet
from streamer.tools.mqtt_publisher import BrokerEndpoint, MqttPublisher
from tests.conftest import ServiceConfig, write_service_config
from tests.integration.harness import (
    Feed,
    ServiceProcess,
    Store,
    http_get,
    metric,
    scrape,
    wait_for,
)

SEED = (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0))


def seed(feed: Feed, store: Store, prefix: str = "test") -> None:
    for symbol, price in SEED:
        feed.tick(symbol, price, ts=time.time_ns())
    wait_for(lambda: store.hget(f"{prefix}:index:PX3", "level") == "350.0", what="PX3 at 350")


def px3_is(store: Store, level: float) -> bool:
    """PX3's published level is ``level`` (to 1e-9: sums move incrementally)."""
    text = store.hget("test:index:PX3", "level")
    return text is not None and math.isclose(float(text), level, rel_tol=1e-9)


def events(service: ServiceProcess, name: str) -> list[dict[str, object]]:
    return [e for e in service.log_events() if e["event"] == name]


@pytest.fixture
def servers() -> Iterator[tuple[LocalMosquitto, LocalRedis]]:
    with LocalMosquitto() as broker, LocalRedis() as store:
        yield broker, store


@contextmanager
def running(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path, **sections: dict[str, Any]
) -> Iterator[tuple[ServiceConfig, ServiceProcess, Store, Feed]]:
    """The service on the fixtures' servers, connected, its seed prices published."""
    broker, store_server = servers
    config = write_service_config(tmp_path, broker.url, store_server.url, None, **sections)
    service = ServiceProcess(config.path, config.metrics_url)
    store, feed = Store(store_server.url), Feed(broker.port)
    try:
        service.wait_connected()
        seed(feed, store)
        yield config, service, store, feed
    finally:
        feed.close()
        service.kill()


HOSTILE = {
    "ticks/deep": b"[" * 100_000 + b"]" * 100_000,
    "ticks/deep-msgpack": b"\x91" * 100_000 + b"\xc0",
    "ticks/utf8": msgspec.msgpack.encode([{"symbol": "AAA", "price": 1.0}]).replace(
        b"\xa3AAA", b"\xa3\xff\xfe\xfd"
    ),
    "ticks/int64": b'{"symbol":"AAA","price":101.0,"ts":18446744073709551615,"seq":1}',
    "fx/int64": b'{"pair":"EURUSD","rate":1.1,"ts":99999999999999999999}',
    "control/deep": b'{"action":"split","id":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "control/newline": b'{"action":"split","id":"x\\nforged","symbol":"ZZZ","ratio":2.0}',
    "reference/bad": b'{"index":"PX3\\n","level":1.0}',
}


def test_retained_poison_payloads_are_counted_across_restarts(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    broker, store_server = servers
    config = write_service_config(tmp_path, broker.url, store_server.url)
    publisher = Feed(broker.port)
    for topic, payload in HOSTILE.items():
        publisher.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    publisher.close()
    store = Store(store_server.url)
    for attempt in range(3):  # every start receives them first
        service = ServiceProcess(config.path, config.metrics_url)
        try:
            service.wait_connected()
            feed = Feed(broker.port)
            if attempt == 0:
                seed(feed, store)
            feed.tick("AAA", 101.0 + attempt, ts=time.time_ns())
            feed.close()
            want = (101 + attempt + 75) * 2.0
            wait_for(partial(px3_is, store, want), what="the level after the poison")
            samples = scrape(config.metrics_url)
            assert (
                metric(samples, "streamer_ticks_total", outcome="rejected", reason="malformed") >= 4
            )
            started = time.monotonic()
            assert service.terminate(timeout=10) == 0
            assert time.monotonic() - started < 8  # the shutdown deadline holds
        finally:
            service.kill()
    text = service.logs()
    assert "Traceback" not in text
    for line in text.splitlines():
        if "forged" in line:
            assert json.loads(line)  # one whole JSON line, never two


def test_a_far_future_tick_never_blocks_a_symbol(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    with running(servers, tmp_path) as (config, _, store, feed):
        feed.tick("AAA", 102.0, ts=9_200_000_000_000_000_000)  # the year 2261
        feed.tick("AAA", 103.0, ts=time.time_ns())
        wait_for(lambda: px3_is(store, (103 + 75) * 2.0), what="103")
        samples = scrape(config.metrics_url)
        assert metric(samples, "streamer_ticks_total", outcome="rejected", reason="future_ts") == 1


def test_wrong_credentials_are_said_clearly(tmp_path: Path) -> None:
    with LocalMosquitto(username="streamer", password="right") as broker, LocalRedis() as r:
        url = f"mqtt://streamer:wrong@127.0.0.1:{broker.port}"
        config = write_service_config(tmp_path, url, r.url)
        service = ServiceProcess(config.path, config.metrics_url)
        try:
            refused = (
                "mqtt login refused by the broker: check the user in [mqtt].url and the "
                "password (STREAMER_MQTT_PASSWORD or STREAMER_MQTT_PASSWORD_FILE)"
            )
            wait_for(lambda: events(service, refused), what="the login error")
            status, body = http_get(config.metrics_url + "/readyz")
            assert status == 503 and "mqtt login refused" in body
            assert "wrong" not in service.logs()  # the password is never logged
            time.sleep(3)
            assert len(events(service, "mqtt connect failed")) == 0
            assert service.process.poll() is None
        finally:
            service.kill()


def test_another_client_with_our_id_is_detected_and_backed_off(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    broker, store_server = servers
    config = write_service_config(tmp_path, broker.url, store_server.url)
    client_id = config.sections["mqtt"]["client_id"]
    service = ServiceProcess(config.path, config.metrics_url)
    stop = threading.Event()

    def impostor() -> None:
        # A second instance with the same client id, reconnecting whenever it is kicked.
        while not stop.is_set():
            other = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
                client_id=client_id,
                clean_session=False,
            )
            try:
                other.connect("127.0.0.1", broker.port)
                other.loop_start()
                time.sleep(0.3)
                other.loop_stop()
                other.disconnect()
            except OSError:
                time.sleep(0.1)

    thread = threading.Thread(target=impostor, daemon=True)
    try:
        service.wait_connected()
        thread.start()
        wait_for(
            lambda: metric(scrape(config.metrics_url), "streamer_mqtt_takeovers_total") >= 1,
            timeout=30,
            what="the takeover to be detected",
        )
        [line] = [e for e in service.log_events() if "another client" in str(e["event"])]
        assert line["client_id"] == client_id
    finally:
        stop.set()
        thread.join(5)
        service.kill()
    # Backed off: far fewer reconnects than a storm would make in that time.
    assert len(events(service, "mqtt connected")) < 15


@pytest.mark.parametrize("fault", ["oom", "readonly"])
def test_redis_refusing_writes_is_backed_off_shown_and_recovered(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path, fault: str
) -> None:
    admin = redis.Redis.from_url(servers[1].url)
    with running(servers, tmp_path) as (config, service, store, feed):
        if fault == "oom":
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
        else:
            admin.replicaof("127.0.0.1", 1)  # a primary that is not there
        errors_before = metric(scrape(config.metrics_url), "streamer_redis_errors_total")
        stop_ticks = time.monotonic() + 3
        k = 0
        while time.monotonic() < stop_ticks:
            k += 1
            feed.tick("AAA", 100.0 + k % 5, ts=time.time_ns())
            time.sleep(0.01)
        samples = scrape(config.metrics_url)
        assert metric(samples, "streamer_redis_state", state="refusing_writes") == 1
        status, body = http_get(config.metrics_url + "/readyz")
        assert status == 503 and "redis refuses writes" in body
        # Backed off, not a hot loop: a few refusals a second at most.
        assert metric(samples, "streamer_redis_errors_total") - errors_before < 40
        assert len(events(service, "redis refuses writes")) == 1
        if fault == "oom":
            admin.config_set("maxmemory", 0)
        else:
            admin.replicaof("NO", "ONE")
        feed.tick("AAA", 104.5, ts=time.time_ns())  # within 10% of every price sent before
        wait_for(lambda: px3_is(store, (104.5 + 75) * 2.0),
                 timeout=15, what="levels again after recovery")  # fmt: skip
        samples = scrape(config.metrics_url)
        assert metric(samples, "streamer_redis_state", state="connected") == 1


def test_a_dead_feed_shows_in_redis(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    with running(servers, tmp_path, quality={"stale_after_s": 1.0}) as (_, _, store, _):
        assert store.hget("test:index:PX3", "coverage") == "1.0"
        # No tick after this: nothing moves, but staleness must still reach Redis.
        wait_for(lambda: store.hget("test:index:PX3", "stale") == "3", timeout=10,
                 what="PX3 to show its 3 constituents stale")  # fmt: skip
        assert store.hget("test:index:PX3", "coverage") == "0.0"
        messages = [fields for _, fields in store.xrange("test:history:PX3")]
        assert messages[-1]["stale"] == "3"


def test_a_backlog_is_read_fast_and_levels_catch_up_with_the_newest_prices(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    broker = servers[0]
    with running(servers, tmp_path) as (config, service, store, _):
        # The service stops reading (as if far too slow) while the feed sends 150,000
        # single-tick messages: the backlog piles up in the broker and the socket.
        service.process.send_signal(signal.SIGSTOP)
        n = 150_000
        endpoint = BrokerEndpoint.from_url(broker.url)
        with MqttPublisher(endpoint) as publisher:
            packets = []
            for k in range(n):
                symbol = "AAA" if k % 2 else "BBB"
                price = 100.0 + (k % 50) * 0.01 if symbol == "AAA" else 50.0 + (k % 50) * 0.01
                body = b'{"symbol":"%s","price":%r,"ts":%d}' % (
                    symbol.encode(),
                    price,
                    time.time_ns(),
                )
                packets.append(publish_packet(b"ticks/" + symbol.encode(), body))
            for lo in range(0, n, 5000):
                publisher.publish_packets(packets[lo : lo + 5000])
        last_aaa = json.loads(packets[-1][packets[-1].index(b"{") :])["price"]
        last_bbb = json.loads(packets[-2][packets[-2].index(b"{") :])["price"]
        service.process.send_signal(signal.SIGCONT)
        want = (last_aaa + last_bbb + 25.0) * 2.0
        wait_for(lambda: px3_is(store, want), timeout=30,
                 what="the newest prices after the backlog")  # fmt: skip
        samples = scrape(config.metrics_url)
        counted = sum(
            metric(samples, "streamer_ticks_total", outcome=o, reason=r)
            for o, r in (("accepted", "ok"), ("conflated", "queue_full"),
                         ("conflated", "inbox_full"), ("rejected", "out_of_order"))
        )  # fmt: skip
        assert counted >= n  # every message read and accounted for
        wait_for(lambda: metric(scrape(config.metrics_url), "streamer_ingest_lag_seconds") < 5,
                 timeout=10, what="the ingest lag to come down")  # fmt: skip


def test_rejected_actions_and_references_are_counted(
    servers: tuple[LocalMosquitto, LocalRedis], tmp_path: Path
) -> None:
    with running(servers, tmp_path) as (config, service, _, feed):
        for k in range(50):  # logged at a throttled rate, counted every time
            feed.control({"action": "split", "id": f"s{k}", "symbol": "NOPE", "ratio": 2.0})
        feed.send("reference/x", b'{"index": "NOPE", "level": 1.0}')
        wait_for(lambda: metric(scrape(config.metrics_url), "streamer_actions_total",
                                outcome="rejected", reason="unknown_symbol") == 50,
                 what="50 rejected actions")  # fmt: skip
        samples = scrape(config.metrics_url)
        assert metric(samples, "streamer_references_total", outcome="rejected",
                      reason="unknown_index") == 1  # fmt: skip
        assert len(events(service, "action not applied")) <= 2


def test_an_action_sent_while_the_broker_and_the_service_were_down_is_applied_once(
    tmp_path: Path,
) -> None:
    with LocalMosquitto(persistent=True) as broker, LocalRedis() as store_server:
        config = write_service_config(tmp_path, broker.url, store_server.url)
        store = Store(store_server.url)
        service = ServiceProcess(config.path, config.metrics_url)
        try:
            service.wait_connected()
            feed = Feed(broker.port)
            seed(feed, store)
            feed.close()
        finally:
            assert service.terminate() == 0
        # The service is down; an operator sends a split (acknowledged by the broker), and
        # the broker crashes once it has saved it.
        operator = Feed(broker.port)
        operator.control({"action": "split", "id": "split-a", "symbol": "AAA", "ratio": 2.0})
        operator.close()
        deadline = time.monotonic() + 5
        while b"split-a" not in broker.database_path.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        broker.kill()
        broker.start()
        service = ServiceProcess(config.path, config.metrics_url)
        try:
            service.wait_connected()
            wait_for(lambda: store.xlen("test:actions") == 2, what="the split in both indices")
            # Restarted again (the broker too): the split is not applied a second time.
            service.terminate()
            broker.restart()
            service = ServiceProcess(config.path, config.metrics_url)
            service.wait_connected()
            time.sleep(1.0)
            assert store.xlen("test:actions") == 2
            divisor = float(store.hget("test:index:PX3", "divisor") or 0)
            assert divisor == pytest.approx(0.5 * 125 / 175)
            assert not events(service, "mqtt broker lost our persistent session: QoS 1 messages "
                              "sent while we were away may be lost; compare P:actions with what "
                              "operators sent, and resend missing actions (ids make a resend "
                              "safe)")  # fmt: skip
        finally:
            service.kill()


def test_a_broker_that_lost_our_session_is_said_loudly(tmp_path: Path) -> None:
    with LocalMosquitto() as broker, LocalRedis() as store_server:  # no persistence
        config = write_service_config(tmp_path, broker.url, store_server.url)
        service = ServiceProcess(config.path, config.metrics_url)
        try:
            service.wait_connected()
            broker.restart()  # forgets every session
            wait_for(lambda: metric(scrape(config.metrics_url),
                                    "streamer_mqtt_session_lost_total") == 1,
                     timeout=20, what="the lost session")  # fmt: skip
        finally:
            service.kill()


def test_an_action_acknowledged_while_the_service_reconnects_is_applied(tmp_path: Path) -> None:
    # The red team's case: a split and a special dividend sent at QoS 1 and acknowledged by
    # the broker shortly before the service resubscribed after a broker restart.
    with LocalMosquitto(persistent=True) as broker, LocalRedis() as store_server:
        config = write_service_config(tmp_path, broker.url, store_server.url)
        store = Store(store_server.url)
        service = ServiceProcess(config.path, config.metrics_url)
        try:
            service.wait_connected()
            feed = Feed(broker.port)
            seed(feed, store)
            feed.close()
            broker.restart()  # the service sees it go and reconnects with backoff
            operator = Feed(broker.port)  # at once, before the service is back
            operator.control({"action": "split", "id": "split-a", "symbol": "AAA", "ratio": 2.0})
            operator.control(
                {"action": "special_dividend", "id": "sd-b", "symbol": "BBB", "amount": 5.0}
            )
            operator.close()
            wait_for(lambda: store.xlen("test:actions") == 3, timeout=20,
                     what="the split (2 indices) and the special dividend")  # fmt: skip
            # PX3: S 175 -> 125 after the split, then 125 -> 120 after the dividend.
            divisor = float(store.hget("test:index:PX3", "divisor") or 0)
            assert divisor == pytest.approx(0.5 * 125 / 175 * 120 / 125)
            assert px3_is(store, 350.0)
        finally:
            service.kill()
