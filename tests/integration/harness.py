"""Helpers for tests that drive the service: a feed publisher, the service as a subprocess,
metric scraping and polling (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import paho.mqtt.client as mqtt
import redis
from prometheus_client.parser import text_string_to_metric_families

from streamer.localservices import die_with_parent
from streamer.wire import encode

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def eventually(probe: Callable[[], object], within: float = 10.0) -> None:
    """Poll ``probe`` on the event loop until truthy; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not probe():  # noqa: ASYNC110 - polling an outside process, no event to await
            await asyncio.sleep(0.01)


class Store:
    """A typed view of the sync Redis client with text responses, for assertions."""

    def __init__(self, url: str, cluster: bool = False) -> None:
        self.client: redis.Redis = (
            cast("redis.Redis", redis.RedisCluster.from_url(url, decode_responses=True))
            if cluster
            else redis.Redis.from_url(url, decode_responses=True)
        )

    def hget(self, key: str, field: str) -> str | None:
        return cast("str | None", self.client.hget(key, field))

    def hgetall(self, key: str) -> dict[str, str]:
        return cast("dict[str, str]", self.client.hgetall(key))

    def xrange(self, key: str) -> list[tuple[str, dict[str, str]]]:
        return cast("list[tuple[str, dict[str, str]]]", self.client.xrange(key))

    def xlen(self, key: str) -> int:
        return self.client.xlen(key)

    def pubsub(self) -> Any:
        return self.client.pubsub()  # type: ignore[no-untyped-call]


def streamer_command() -> list[str]:
    """The installed console script, or the module when streamer is not installed."""
    script = Path(sys.executable).parent / "streamer"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "streamer.cli"]


class Feed:
    """A plain MQTT publisher (paho, its own network thread), as a market-data feed would be."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)  # type: ignore[attr-defined]
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=5)

    def tick(self, symbol: str, price: float, fmt: str = "json", **fields: Any) -> None:
        self.send(f"ticks/{symbol}", encode({"symbol": symbol, "price": price, **fields}, fmt))  # type: ignore[arg-type]

    def ticks(
        self, ticks: list[dict[str, Any]], fmt: str = "json", topic: str = "ticks/batch"
    ) -> None:
        self.send(topic, encode(ticks, fmt))  # type: ignore[arg-type]

    def control(self, action: dict[str, Any]) -> None:
        self.send(f"control/{action['action']}", json.dumps(action))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


class ServiceProcess:
    """``streamer run --config PATH`` as a subprocess with JSON logs captured to a file."""

    def __init__(
        self,
        config_path: Path,
        metrics_url: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ):
        self.metrics_url = metrics_url
        self.log_path = config_path.parent / "service.log"
        self._log = self.log_path.open("ab")  # a restarted service adds to the same log
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), environment.get("PYTHONPATH", "")) if p
        )
        environment.update(env or {})
        self.process = subprocess.Popen(
            [
                *streamer_command(),
                *("--log-format", "json", "run", "--config", str(config_path)),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no orphan if the test run dies
        )

    def wait_connected(self, timeout: float = 15.0) -> None:
        """Until both the broker and Redis are connected (levels may not exist yet)."""

        def connected() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited {self.process.returncode}: {self.logs()}")
            status, body = http_get(self.metrics_url + "/readyz")
            return status == 200 or (status == 503 and "not connected" not in body)

        wait_for(connected, timeout, 0.05, "the service to connect")

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def terminate(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def promtool() -> str | None:
    return shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
