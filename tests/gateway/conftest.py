"""The gateway under test: ``streamer run`` and ``streamer gateway`` as subprocesses against the
private broker and Redis, with a feed to move the levels."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.localservices import LocalMosquitto, die_with_parent, free_port
from tests.conftest import ServiceConfig, ServiceConfigFactory
from tests.integration.harness import REPO, Feed, ServiceProcess, http_get, streamer_command

# Levels of the default indices (tests/conftest.py) after prime(): PX3 = (10+20+30)/0.5.
PRIME_PRICES = {"AAA": 10.0, "BBB": 20.0, "CCC": 30.0, "DDD": 40.0}


class GatewayProcess:
    """``streamer gateway --config PATH`` as a subprocess, its log in a file."""

    def __init__(self, config: ServiceConfig, env: dict[str, str] | None = None) -> None:
        listen = config.sections["gateway"]["listen"]
        self.url = f"http://{listen}"
        self.log_path = config.path.parent / "gateway.log"
        self._log = self.log_path.open("ab")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), environment.get("PYTHONPATH", "")) if p
        )
        environment.update(env or {})
        self.process = subprocess.Popen(
            [*streamer_command(), "gateway", "--config", str(config.path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no orphan if the test run dies
        )

    def wait_live(self, timeout: float = 15.0) -> None:
        """Until the gateway serves /healthz with its Redis subscription live."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}: {self.logs()}")
            status, body = http_get(self.url + "/healthz")
            if status == 200 and '"live"' in body:
                return
            time.sleep(0.05)
        raise AssertionError(f"the gateway did not become live: {self.logs()}")

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text(encoding="ascii")
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._log.close()
        return code


def gateway_section(**overrides: Any) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{free_port()}", "heartbeat_s": 0.5, **overrides}


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    """The [gateway] table; a module overrides this fixture to change it."""
    return gateway_section()


@pytest.fixture
def config(service_config: ServiceConfigFactory, gateway_settings: dict[str, Any]) -> ServiceConfig:
    # Big moves are not held for confirmation: a test's tick moves its level at once.
    return service_config(gateway=gateway_settings, quality={"max_move_pct": 1000.0})


@pytest.fixture
def feed(mosquitto: LocalMosquitto) -> Iterator[Feed]:
    publisher = Feed(mosquitto.port)
    try:
        yield publisher
    finally:
        publisher.close()


@pytest.fixture
def service(config: ServiceConfig, feed: Feed) -> Iterator[ServiceProcess]:
    """The service, connected, with every constituent priced so that PX3 and CAP2 have
    levels."""
    process = ServiceProcess(config.path, config.metrics_url)
    try:
        process.wait_connected()
        feed.ticks([{"symbol": s, "price": p} for s, p in PRIME_PRICES.items()])
        yield process
    finally:
        process.kill()


@pytest.fixture
def gateway(config: ServiceConfig, service: ServiceProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(config)
    try:
        process.wait_live()
        yield process
    finally:
        process.stop()
