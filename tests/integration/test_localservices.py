"""The local-services fixtures: servers answer, restart on the same port, configs load."""

from __future__ import annotations

import redis

from streamer.config import load_settings
from streamer.localservices import LocalMosquitto, LocalRedis
from tests.conftest import ServiceConfigFactory


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
