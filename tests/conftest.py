"""Shared fixtures: private mosquitto and redis-server processes, and service configs.

The servers are function-scoped so that fault tests can kill and restart them freely; each
starts in a few tens of milliseconds (a Redis Cluster in about 2 s).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamer.localservices import LocalMosquitto, LocalRedis, LocalRedisCluster, free_port

# Hand-checkable indices used by the service tests.
#   PX3: price-weighted, divisor 0.5 -> level = (AAA + BBB + CCC) / 0.5
#   CAP2: cap-weighted, divisor 1e6 -> level = (AAA * 1e6 + DDD * 2e6 * 0.5) / 1e6
DEFAULT_INDICES: dict[str, str] = {
    "px3.toml": """
        id = "PX3"
        name = "Three price-weighted"
        method = "price"
        currency = "USD"
        divisor = 0.5
        constituents = [
          { symbol = "AAA" },
          { symbol = "BBB" },
          { symbol = "CCC" },
        ]
    """,
    "cap2.toml": """
        id = "CAP2"
        name = "Two cap-weighted"
        method = "cap"
        currency = "USD"
        divisor = 1000000.0
        constituents = [
          { symbol = "AAA", shares = 1000000.0 },
          { symbol = "DDD", shares = 2000000.0, iwf = 0.5 },
        ]
    """,
}


@dataclass(frozen=True)
class ServiceConfig:
    """A service config written to disk, and what tests need to talk to the service."""

    path: Path
    metrics_port: int
    prefix: str
    mqtt_url: str
    redis_url: str
    index_ids: tuple[str, ...]
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_service_config(
    directory: Path,
    mqtt_url: str,
    redis_url: str,
    indices: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> ServiceConfig:
    """Write ``service.toml`` plus index definitions into ``directory``.

    ``sections`` override or extend config tables, e.g. ``publish={"interval_ms": 100}``.
    """
    metrics_port = free_port()
    tables: dict[str, dict[str, Any]] = {
        "mqtt": {"url": mqtt_url, "client_id": f"streamer-test-{metrics_port}"},
        "redis": {"url": redis_url, "prefix": "test", "actions_maxlen": 1000},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "publish": {"interval_ms": 0, "history_interval_ms": 0, "history_retention_s": 60.0},
        "ingest": {"recompute_interval_s": 1.0},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    index_dir = directory / "indices"
    index_dir.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    for filename, text in (DEFAULT_INDICES if indices is None else indices).items():
        body = textwrap.dedent(text).strip() + "\n"
        (index_dir / filename).write_text(body, encoding="utf-8")
        for line in body.splitlines():
            if line.startswith("id"):
                ids.append(line.split("=", 1)[1].strip().strip('"'))
    lines = ['indices = ["indices/*.toml"]', ""]
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path = directory / "service.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return ServiceConfig(
        path=path,
        metrics_port=metrics_port,
        prefix=str(tables["redis"]["prefix"]),
        mqtt_url=mqtt_url,
        redis_url=redis_url,
        index_ids=tuple(ids),
        sections=tables,
    )


@pytest.fixture
def mosquitto() -> Iterator[LocalMosquitto]:
    """A private anonymous mosquitto on a free loopback port."""
    with LocalMosquitto() as broker:
        yield broker


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    """A private redis-server on a free loopback port, without persistence."""
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A private three-master Redis Cluster (about 2 s to start: Redis holds a master that
    has just started back for 2 s before it reports the cluster ok)."""
    with LocalRedisCluster() as cluster:
        yield cluster


ServiceConfigFactory = Callable[..., ServiceConfig]


@pytest.fixture
def service_config(
    tmp_path: Path, mosquitto: LocalMosquitto, redis_server: LocalRedis
) -> ServiceConfigFactory:
    """Factory: ``service_config(indices=None, **sections)`` writes a config for the fixtures'
    broker and Redis into ``tmp_path`` (defaults: the PX3 and CAP2 indices above)."""

    def make(indices: dict[str, str] | None = None, **sections: dict[str, Any]) -> ServiceConfig:
        return write_service_config(tmp_path, mosquitto.url, redis_server.url, indices, **sections)

    return make
