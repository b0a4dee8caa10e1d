"""``streamer simulate`` drives the real service: every tick accepted, levels as expected."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import redis

from streamer.localservices import LocalMosquitto, LocalRedis
from streamer.wire import Tick
from tests.conftest import ServiceConfigFactory
from tests.tools.support import (
    Subscriber,
    accepted_ticks,
    run_streamer,
    running_service,
    wait_until,
)


@pytest.mark.parametrize(("fmt", "batch"), [("json", 1), ("msgpack", 25)])
def test_simulated_ticks_become_levels(
    tmp_path: Path,
    mosquitto: LocalMosquitto,
    redis_server: LocalRedis,
    service_config: ServiceConfigFactory,
    fmt: str,
    batch: int,
) -> None:
    config = service_config()
    with (
        running_service(config, tmp_path),
        Subscriber(mosquitto.host, mosquitto.port, "ticks/#") as feed,
    ):
        result = run_streamer(
            "simulate", "--config", str(config.path), "--rate", "1000", "--batch", str(batch),
            "--format", fmt, "--duration", "1", "--seed", "42", "--time-scale", "600",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = re.search(r"simulate: ([\d,]+) ticks .*\(\+ ([\d,]+) opening", result.stdout)
        assert summary, result.stdout
        sent = sum(int(g.replace(",", "")) for g in summary.groups())
        assert sent > 500
        wait_until(lambda: accepted_ticks(config) == sent, what=f"{sent} accepted ticks")
        wait_until(lambda: sum(len(_ticks(p)) for _, p in feed.messages) == sent)

        last: dict[str, float] = {}
        for _, payload in feed.messages:
            for tick in _ticks(payload):
                last[tick.symbol] = tick.price
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        expected = {
            "PX3": (last["AAA"] + last["BBB"] + last["CCC"]) / 0.5,
            "CAP2": (last["AAA"] * 1e6 + last["DDD"] * 2e6 * 0.5) / 1e6,
        }

        def published() -> dict[str, float]:
            return {s: float(client.hget(f"test:index:{s}", "level") or "nan") for s in expected}

        wait_until(lambda: published() == pytest.approx(expected, rel=1e-12),
                   what=f"levels {expected}")  # fmt: skip


def _ticks(payload: bytes) -> list[Tick]:
    if payload[:1] == b"{":
        return [msgspec.json.decode(payload, type=Tick)]
    if payload[:1] == b"[":
        return msgspec.json.decode(payload, type=list[Tick])
    return msgspec.msgpack.decode(payload, type=list[Tick])
