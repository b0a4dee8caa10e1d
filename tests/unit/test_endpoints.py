"""The one parser of broker, Redis and listen addresses, and the URL redaction built on it."""

from __future__ import annotations

import pytest

from streamer.config import MqttSettings
from streamer.endpoints import (
    ListenAddress,
    MqttEndpoint,
    RedisEndpoint,
    parse_listen_address,
    parse_mqtt_url,
    parse_redis_url,
    redact_url,
)
from streamer.errors import EndpointError
from streamer.ingest.transport import broker_address
from streamer.tools.mqtt_publisher import BrokerEndpoint, BrokerError


def test_an_mqtt_url_gives_host_port_credentials_and_tls() -> None:
    assert parse_mqtt_url("mqtt://broker.local") == MqttEndpoint(
        host="broker.local", port=1883, username=None, password=None, tls=False
    )
    assert parse_mqtt_url("mqtts://feed:p%40ss@10.0.0.1") == MqttEndpoint(
        host="10.0.0.1", port=8883, username="feed", password="p@ss", tls=True
    )
    assert parse_mqtt_url("mqtt://[::1]:1884").host == "::1"


def test_a_password_from_the_environment_replaces_the_urls() -> None:
    assert parse_mqtt_url("mqtt://feed:url@broker", "env").password == "env"
    assert parse_mqtt_url("mqtt://feed:url@broker", None).password == "url"
    assert parse_redis_url("redis://:url@cache", "env").password == "env"


def test_a_redis_url_gives_the_database_from_the_path_or_the_query() -> None:
    assert parse_redis_url("redis://cache") == RedisEndpoint(
        host="cache", port=6379, db=0, username=None, password=None, tls=False
    )
    assert parse_redis_url("rediss://desk@cache:6380/3").db == 3
    assert parse_redis_url("redis://cache?db=2&password=q%26uery").db == 2
    assert parse_redis_url("redis://cache?password=q%26uery").password == "q&uery"
    assert parse_redis_url("redis://desk:p@ss:w0rd@cache/1").password == "p@ss:w0rd"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mqtt://broker:99999", "port 99999 is out of range 1..65535"),
        ("mqtt://broker:0", "port 0 is out of range"),
        ("mqtt://broker:abc", "the port is not a number"),
        ("mqtt://:1883", "names no host"),
        ("mqtt://", "names no host"),
        ("mqtt:broker", "must start with mqtt:// or mqtts://"),
        ("tcp://broker:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt://broker/topic", "no path"),
        ("mqtt://broker?x=1", "no path, query"),
        ("mqtt://bro ker", "whitespace"),
        ("mqtt://broker\n", "control"),
        ("mqtt://[::1", "not a valid URL"),
        ("mqtt://bro$ker", "not a host name"),
        ("mqtt://feed:se/cret@broker", "percent-encode"),
    ],
)
def test_a_bad_mqtt_url_is_refused(url: str, problem: str) -> None:
    with pytest.raises(EndpointError) as raised:
        parse_mqtt_url(url)

    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://cache:abc/0", "the port is not a number"),
        ("redis://cache:70000", "out of range"),
        ("redis://cache/zero", "database number must be an integer >= 0"),
        ("redis://cache/-1", "database number must be an integer >= 0"),
        ("redis://cache/1?db=2", "not both"),
        ("redis://:pw@cache?password=pw", "not both"),
        ("redis://cache?socket_timeout=9", "unsupported query parameter 'socket_timeout'"),
        ("redis://cache?db=1&db=2", "given twice"),
        ("redis://cache#x", "no fragment"),
        ("unix:///tmp/redis.sock", "must start with redis:// or rediss://"),
    ],
)
def test_a_bad_redis_url_is_refused(url: str, problem: str) -> None:
    with pytest.raises(EndpointError) as raised:
        parse_redis_url(url)

    assert problem in str(raised.value)


def test_error_messages_never_quote_a_password() -> None:
    for url in (
        "http://desk:hunter2@cache",
        "redis://desk:hunter2",  # the host forgotten: "hunter2" reads as the port
        "redis://desk:hun/ter2@cache",
        "redis://desk:12?hunter2@cache",
    ):
        with pytest.raises(EndpointError) as raised:
            parse_redis_url(url)
        assert "hunter2" not in str(raised.value)
        assert "hun" not in str(raised.value)


def test_display_masks_the_password() -> None:
    assert parse_mqtt_url("mqtts://feed:s3cret@broker").display == "mqtts://feed:***@broker:8883"
    assert parse_mqtt_url("mqtt://feed@broker:1").display == "mqtt://feed@broker:1"
    assert parse_mqtt_url("mqtt://[::1]").display == "mqtt://[::1]:1883"
    assert parse_redis_url("redis://cache?password=x").display == "redis://:***@cache:6379/0"
    assert "s3cret" not in repr(parse_redis_url("redis://desk:s3cret@cache"))


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://cache:6379/0?password=X", "redis://cache:6379/0?password=***"),
        ("redis://cache/0?db=1&Password=X", "redis://cache/0?db=1&Password=***"),
        ("redis://desk:p@ss:w0rd@cache:6379/0", "redis://desk:***@cache:6379/0"),
        ("mqtts://feed:pa55@broker:8883", "mqtts://feed:***@broker:8883"),
        ("redis://:secret@cache", "redis://:***@cache"),
        ("redis://desk:se/cret@cache/0", "redis://***@cache/0"),
        ("redis://desk:se?cret@cache/0", "redis://***@cache/0"),
        ("redis://desk:s3@[::1", "redis://***@[::1"),
        ("mqtt://feed@broker", "mqtt://feed@broker"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_every_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9108", ListenAddress("127.0.0.1", 9108)),
        ("0.0.0.0:9108", ListenAddress("0.0.0.0", 9108)),
        ("[::]:9108", ListenAddress("::", 9108)),
        ("localhost:1", ListenAddress("localhost", 1)),
    ],
)
def test_a_listen_address_names_its_host(text: str, address: ListenAddress) -> None:
    assert parse_listen_address(text) == address
    assert address.display == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (":9108", "0.0.0.0:9108 or [::]:9108"),
        ("9108", "must be HOST:PORT"),
        ("127.0.0.1:", "names no port"),
        ("127.0.0.1:65536", "out of range"),
        ("::1:9108", "brackets"),
        ("[nope]:9108", "not an IPv6 address"),
        ("[::1]9108", "[IPv6]:PORT"),
    ],
)
def test_a_bad_listen_address_is_refused(text: str, problem: str) -> None:
    with pytest.raises(EndpointError) as raised:
        parse_listen_address(text)

    assert problem in str(raised.value)


def test_the_service_and_the_tools_read_broker_urls_through_the_same_parser() -> None:
    url = "mqtts://feed:p%3Ass@broker.local:8884"
    service = broker_address(MqttSettings(url=url))
    tool = BrokerEndpoint.from_url(url)

    assert (service.host, service.port, service.username, service.password, service.tls) == (
        tool.host, tool.port, tool.username, tool.password, tool.tls,
    )  # fmt: skip
    assert service.password == "p:ss"
    with pytest.raises(BrokerError, match="out of range"):
        BrokerEndpoint.from_url("mqtt://broker:99999")
    # The tools fill a missing password; the service lets the environment's win.
    assert BrokerEndpoint.from_url("mqtt://feed:url@b", "env").password == "url"
    assert broker_address(MqttSettings(url="mqtt://feed:url@b", password="env")).password == "env"
