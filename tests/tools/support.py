"""Running streamer commands and the service as real processes, for the operator-tool tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from streamer.tools.processes import ChildProcess, child_environment, streamer_command
from streamer.tools.scrape import scrape
from tests.conftest import ServiceConfig


def run_streamer(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``streamer ARGS`` in a subprocess; output captured as text."""
    return subprocess.run(
        streamer_command(*args),
        env=child_environment({"COLUMNS": "160", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def running_service(config: ServiceConfig, workdir: Path) -> Iterator[ChildProcess]:
    """``streamer run --config`` until the block ends; fails the test if it exits non-zero."""
    service = ChildProcess(
        "service",
        streamer_command("run", "--config", str(config.path)),
        child_environment({}),
        workdir / "service.log",
    )
    service.start()
    try:
        service.wait_for_metrics(f"{config.metrics_url}/metrics")
        yield service
    finally:
        code = service.stop()
    assert code == 0, service.log_tail()


def accepted_ticks(config: ServiceConfig) -> int:
    metrics = scrape(f"{config.metrics_url}/metrics")
    return int(metrics.value("streamer_ticks_total", outcome="accepted", reason="ok"))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


class Subscriber:
    """A paho-mqtt client collecting (topic, payload) of everything under ``topic``."""

    def __init__(self, url_host: str, port: int, topic: str = "#") -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, *_: c.subscribe(topic)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, bytes(m.payload))
        )
        self._client.connect(url_host, port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "subscriber did not subscribe"

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
