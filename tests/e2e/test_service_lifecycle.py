"""`streamer run` end to end: metrics and probes, config errors, and a clean SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from streamer.localservices import LocalMosquitto
from tests.conftest import ServiceConfigFactory
from tests.integration.harness import (
    Feed,
    ServiceProcess,
    Store,
    http_get,
    promtool,
    streamer_command,
    wait_for,
)

DESIGN_METRICS = (
    "streamer_ticks_total",
    "streamer_tick_to_publish_seconds",
    "streamer_feed_delay_seconds",
    "streamer_index_level",
    "streamer_stale_constituents",
    "streamer_reference_deviation_bps",
    "streamer_batch_size",
    "streamer_queue_depth",
    "streamer_mqtt_reconnects_total",
    "streamer_redis_errors_total",
)


def test_metrics_probes_and_sigterm(
    service_config: ServiceConfigFactory, mosquitto: LocalMosquitto
) -> None:
    config = service_config()
    service = ServiceProcess(config.path, config.metrics_url)
    feed = Feed(mosquitto.port)
    store = Store(config.redis_url)
    try:
        service.wait_connected()
        assert http_get(config.metrics_url + "/healthz") == (200, "ok\n")
        status, body = http_get(config.metrics_url + "/readyz")
        assert status == 503 and "no level yet" in body
        for symbol, price in (("AAA", 100.0), ("BBB", 50.0), ("CCC", 25.0), ("DDD", 10.0)):
            feed.tick(symbol, price, ts=time.time_ns())
        feed.send("reference/PX3", b'{"index": "PX3", "level": 349.65}')
        wait_for(lambda: http_get(config.metrics_url + "/readyz")[0] == 200, what="ready")

        def scraped() -> str | None:
            text = http_get(config.metrics_url + "/metrics")[1]
            wanted = ('streamer_reference_deviation_bps{index="PX3"}', "streamer_index_level{")
            return text if all(w in text for w in wanted) else None

        text = wait_for(scraped, what="the reference deviation and published levels")
        for name in DESIGN_METRICS:
            assert f"# TYPE {name} " in text, name
        assert 'streamer_index_level{index="PX3"} 350.0' in text
        deviation = next(
            line
            for line in text.splitlines()
            if line.startswith('streamer_reference_deviation_bps{index="PX3"}')
        )
        assert float(deviation.split()[-1]) == pytest.approx((350.0 / 349.65 - 1) * 1e4)
        tool = promtool()
        if tool:
            check = subprocess.run(
                [tool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
            )
            assert check.returncode == 0, check.stdout + check.stderr

        seq_before = int(store.hget(f"{config.prefix}:index:PX3", "seq") or 0)
        assert service.terminate(timeout=5) == 0
        assert int(store.hget(f"{config.prefix}:index:PX3", "seq") or 0) == seq_before + 1
        events = [e["event"] for e in service.log_events()]
        assert "final levels and checkpoint written" in events
        assert events[-1] == "service stopped"
    finally:
        feed.close()
        service.kill()


def test_invalid_config_exits_2_with_one_line(tmp_path: pytest.TempPathFactory) -> None:
    bad = tmp_path / "bad.toml"  # type: ignore[operator]
    bad.write_text('[mqtt]\nurl = "http://nope"\n', encoding="utf-8")
    result = subprocess.run(
        [*streamer_command(), "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        env={
            "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2]),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "mqtt.url" in result.stderr
    assert sys.executable
