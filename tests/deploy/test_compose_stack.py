"""The compose stack without Docker: the broker and Redis run deploy/'s configs, the service and
the simulator run with the config, mounts, secrets and environment docker-compose.yml gives
them; only hostnames and ports are moved to free loopback ones."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamer.config import load_settings
from streamer.localservices import free_port
from tests.deploy.stack import (
    DeployMosquitto,
    DeployRedis,
    http_get,
    streamer_process,
    wait_for,
    wait_until_ready,
)
from tests.deploy.support import COMPOSE_FILE, load_yaml, secret
from tests.deploy.test_compose import command_option, container_view

pytestmark = pytest.mark.timeout(180)


def moved(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced, user and path kept."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


def environment_for(
    compose: dict[str, Any], name: str, root: Path, broker: DeployMosquitto, store: DeployRedis
) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment as compose runs it, with the container's mounts
    under ``root`` and the broker and Redis moved to where the test runs them."""
    spec = compose["services"][name]
    _, environment = container_view(compose, name, root)
    command = [
        str(root / arg.lstrip("/")) if arg.startswith("/etc/") else arg for arg in spec["command"]
    ]
    config_path = Path(command_option(command, "--config"))
    settings = load_settings(config_path, environ=environment)
    mqtt_url = environment.get("STREAMER_MQTT_URL", settings.mqtt.url)
    assert urlsplit(mqtt_url).hostname == "mosquitto"
    # The service's listener or everyone else's, as the container port says.
    listener = broker.port_for(urlsplit(mqtt_url).port or 1883)
    environment["STREAMER_MQTT_URL"] = moved(mqtt_url, broker.host, listener)
    assert urlsplit(settings.redis.url).hostname == "redis"
    environment["STREAMER_REDIS_URL"] = moved(settings.redis.url, store.host, store.port)
    return command, environment


def index_hash(client: redis.Redis, key: str) -> Mapping[str, str] | None:
    found = client.hgetall(key)
    return {str(k): str(v) for k, v in found.items()} or None


def test_service_and_simulator_run_with_the_compose_credentials(tmp_path: Path) -> None:
    compose: dict[str, Any] = load_yaml(COMPOSE_FILE)
    with DeployMosquitto() as broker, DeployRedis() as store:
        service_root = tmp_path / "streamer-container"
        service_command, service_env = environment_for(
            compose, "streamer", service_root, broker, store
        )
        metrics_port = free_port()
        service_env["STREAMER_METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        settings = load_settings(command_option(service_command, "--config"), environ=service_env)

        simulator_command, simulator_env = environment_for(
            compose, "simulator", tmp_path / "simulator-container", broker, store
        )
        simulator_command += ["--duration", "60", "--seed", "7"]

        with (
            streamer_process(service_command, service_env, tmp_path) as service,
            streamer_process(simulator_command, simulator_env, tmp_path) as simulator,
        ):
            wait_until_ready(metrics_url, service)
            simulator.assert_running()
            client = redis.Redis(
                host=store.host,
                port=store.port,
                username=urlsplit(settings.redis.url).username,
                password=secret("redis_password"),
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),
            )

            # Simulated ticks (published as `feed`) reach the levels the service (as
            # `streamer`) writes under its prefix.
            def accepted_ticks() -> float | None:
                _, body = http_get(f"{metrics_url}/metrics")
                for line in body.decode().splitlines():
                    if line.startswith('streamer_ticks_total{outcome="accepted",reason="ok"}'):
                        value = float(line.rsplit(" ", 1)[1])
                        return value if value > 0 else None
                return None

            wait_for("simulated ticks to be accepted", accepted_ticks)
            for definition in settings.indices:
                for series in definition.series_ids():
                    key = f"{settings.redis.prefix}:index:{series}"
                    level = wait_for(f"{key} in Redis", partial(index_hash, client, key))
                    assert float(level["level"]) > 0
            simulator.assert_running()
        log = service.log_path.read_text(encoding="utf-8", errors="replace")
        for password in (secret("mqtt_streamer_password"), secret("redis_password")):
            assert password not in log, "a password reached the service log"
        assert "not authorized" not in log.lower()
