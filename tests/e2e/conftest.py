"""The service under test, as a `streamer run` subprocess against the private servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ServiceConfig, ServiceConfigFactory
from tests.integration.harness import ServiceProcess


@pytest.fixture
def config(service_config: ServiceConfigFactory) -> ServiceConfig:
    """The default config; a module overrides this fixture to change sections."""
    return service_config()


@pytest.fixture
def service(config: ServiceConfig) -> Iterator[ServiceProcess]:
    process = ServiceProcess(config.path, config.metrics_url)
    try:
        process.wait_connected()
        yield process
    finally:
        process.kill()
