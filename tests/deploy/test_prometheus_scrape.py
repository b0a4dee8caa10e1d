"""A real Prometheus, configured from deploy/prometheus, scrapes a running ``streamer run``:
live index levels, the latency histogram, the alert rules and every dashboard query."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.localservices import LocalMosquitto, LocalRedis, free_port
from streamer.metrics import LATENCY_BUCKETS
from tests.conftest import ServiceConfig, write_service_config
from tests.deploy.stack import (
    PrometheusServer,
    RunningService,
    http_get,
    prometheus_server,
    streamer_process,
    wait_for,
    wait_until_ready,
)
from tests.deploy.support import DASHBOARD, DEPLOY, alert_rules, exported_series_names
from tests.deploy.test_grafana import panels, queries, substitute

pytestmark = pytest.mark.timeout(180)

# PX3 = (AAA + BBB + CCC) / 0.5; CAP2 = (AAA * 1e6 + DDD * 2e6 * 0.5) / 1e6 (tests/conftest.py)
FIRST_PRICES = {"AAA": 10.0, "BBB": 20.0, "CCC": 30.0, "DDD": 40.0}
PX3_LEVEL = (10.0 + 20.0 + 30.0) / 0.5
CAP2_LEVEL = (10.0 * 1e6 + 40.0 * 2e6 * 0.5) / 1e6


@dataclass
class ServiceUnderTest:
    config: ServiceConfig
    process: RunningService
    broker: LocalMosquitto

    def publish_ticks(self, prices: dict[str, float]) -> None:
        payload = json.dumps([{"symbol": s, "price": p} for s, p in prices.items()])
        mqtt_publish.single(
            "ticks/batch", payload, qos=1, hostname=self.broker.host, port=self.broker.port
        )


@pytest.fixture
def running_service(
    tmp_path: Path, mosquitto: LocalMosquitto, redis_server: LocalRedis
) -> Iterator[ServiceUnderTest]:
    """``streamer run`` against the private broker and Redis, serving HTTP, no tick yet."""
    config = write_service_config(tmp_path, mosquitto.url, redis_server.url)
    with streamer_process(["run", "--config", str(config.path)], {}, tmp_path) as process:
        wait_for("/healthz", lambda: http_get(f"{config.metrics_url}/healthz")[0] == 200 or None)
        # /healthz answers before the MQTT session subscribes, and a tick published before that
        # is not ours to receive: wait until the only thing /readyz misses is a level.
        wait_for("subscribed to the broker", lambda: awaiting_only_levels(config.metrics_url))
        yield ServiceUnderTest(config, process, mosquitto)


def awaiting_only_levels(metrics_url: str) -> bool | None:
    status, body = http_get(f"{metrics_url}/readyz")
    problems = body.decode().strip().split("; ")
    return status == 200 or all(p.startswith("no level yet") for p in problems) or None


@pytest.fixture
def prometheus(tmp_path: Path, running_service: ServiceUnderTest) -> Iterator[PrometheusServer]:
    target = f"127.0.0.1:{running_service.config.metrics_port}"
    with prometheus_server([target], tmp_path) as server:
        yield server


def scalar(prometheus: PrometheusServer, expr: str) -> float | None:
    result = prometheus.query(expr)
    if not result:
        return None
    return float(result[0]["value"][1])


def test_prometheus_sees_live_levels_and_the_latency_histogram(
    running_service: ServiceUnderTest, prometheus: PrometheusServer
) -> None:
    # No tick yet, so no index has a level: the readiness probe must say not ready.
    status, body = http_get(f"{running_service.config.metrics_url}/readyz")
    assert status == 503, body
    running_service.publish_ticks(FIRST_PRICES)
    wait_until_ready(running_service.config.metrics_url, running_service.process)

    px3 = wait_for(
        "Prometheus to scrape PX3's level",
        lambda: scalar(prometheus, 'streamer_index_level{job="streamer", index="PX3"}'),
    )
    assert px3 == pytest.approx(PX3_LEVEL)
    assert scalar(prometheus, 'streamer_index_level{index="CAP2"}') == pytest.approx(CAP2_LEVEL)

    buckets = prometheus.query('streamer_tick_to_publish_seconds_bucket{job="streamer"}')
    assert {b["metric"]["le"] for b in buckets} == {
        *(f"{bound}" for bound in map(float, LATENCY_BUCKETS)),
        "+Inf",
    }
    # Observed when Redis acknowledges the publish, which may be a scrape after the level.
    published = wait_for(
        "the first ticks in the latency histogram",
        lambda: scalar(prometheus, "streamer_tick_to_publish_seconds_count") or None,
    )
    assert published == len(FIRST_PRICES)

    # A rate needs the counter to move between scrapes: keep ticking until the p99 is a number.
    prices = iter(range(1, 10_000))

    def p99() -> float | None:
        running_service.process.assert_running()
        running_service.publish_ticks({"AAA": 10.0 + next(prices) / 100})
        value = scalar(
            prometheus,
            "histogram_quantile(0.99, sum by (le) "
            "(rate(streamer_tick_to_publish_seconds_bucket[10s])))",
        )
        return value if value is not None and math.isfinite(value) else None

    latency = wait_for("a finite tick-to-publish p99", p99)
    assert 0 < latency <= LATENCY_BUCKETS[-1]

    target = prometheus.api("targets")["activeTargets"]
    assert [t["health"] for t in target] == ["up"]

    # Every rule of alerts.yml loaded and evaluates without error against live data.
    def rules_evaluated() -> list[dict[str, str]] | None:
        groups = prometheus.api("rules", type="alert")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        never = "0001-01-01"  # Go's zero time: not evaluated yet
        return rules if all(not r["lastEvaluation"].startswith(never) for r in rules) else None

    rules = wait_for("every alert rule to be evaluated", rules_evaluated)
    assert {r["name"] for r in rules} == {rule["alert"] for rule in alert_rules()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

    # Every dashboard query runs against the live series without error.
    for where, expr in queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
        try:
            prometheus.query(substitute(expr))  # asserts that Prometheus answers "success"
        except AssertionError as exc:
            raise AssertionError(f"dashboard {where}: {exc}") from None

    # The current-levels table: every query answers one sample per series labelled exactly
    # (instance, index), which is what Grafana's merge joins the columns on.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    table = next(p for p in panels(dashboard) if p["title"] == "Current levels")
    columns: dict[str, dict[str, float]] = {}
    for target in table["targets"]:
        samples = prometheus.query(substitute(target["expr"]))
        assert all(set(x["metric"]) == {"instance", "index"} for x in samples), samples
        columns[target["refId"]] = {x["metric"]["index"]: float(x["value"][1]) for x in samples}
    # (AAA has moved up a few cents for the p99 above)
    assert columns["A"] == pytest.approx({"PX3": PX3_LEVEL, "CAP2": CAP2_LEVEL}, rel=0.01)
    assert columns["C"] == {"PX3": 0.0, "CAP2": 0.0}  # stale constituents
    assert columns["D"] == {"PX3": 1.0, "CAP2": 1.0}  # coverage
    # Change % since the previous close (24/7: the first level of the day is the base).
    assert set(columns["B"]) == {"PX3", "CAP2"}
    assert all(abs(change) < 5.0 for change in columns["B"].values()), columns["B"]
    # The service-state panels: Redis connected (0), a lag and a checkpoint age in seconds.
    state = next(p for p in panels(dashboard) if p["title"] == "Redis connection state")
    assert scalar(prometheus, substitute(state["targets"][0]["expr"])) == 0.0
    lag = next(p for p in panels(dashboard) if p["title"] == "Ingest lag")
    assert (scalar(prometheus, substitute(lag["targets"][0]["expr"])) or 0.0) >= 0.0


def test_live_series_are_the_ones_dashboards_and_rules_were_checked_against(
    running_service: ServiceUnderTest,
) -> None:
    running_service.publish_ticks(FIRST_PRICES)
    wait_until_ready(running_service.config.metrics_url, running_service.process)
    expected = {
        "streamer_index_level",
        "streamer_ticks_total",
        "streamer_queue_depth",
        "streamer_tick_to_publish_seconds_bucket",
        "streamer_stale_constituents",
    }

    def scraped() -> set[str] | None:
        _, body = http_get(f"{running_service.config.metrics_url}/metrics")
        names = {
            sample.name
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        return names if expected <= names else None  # gauges refresh on a timer

    live = wait_for("the level gauges on /metrics", scraped)
    assert live <= exported_series_names(), sorted(live - exported_series_names())


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command (exec form), with this interpreter for python."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    joined = text.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.startswith("HEALTHCHECK"))
    command: list[str] = json.loads(line[line.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_image_healthcheck_passes_against_the_running_service(
    running_service: ServiceUnderTest,
) -> None:
    env = {"STREAMER_METRICS_LISTEN": f"0.0.0.0:{running_service.config.metrics_port}"}
    result = subprocess.run(
        healthcheck_command(), check=False, env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_image_healthcheck_fails_when_nothing_listens() -> None:
    env = {"STREAMER_METRICS_LISTEN": f"0.0.0.0:{free_port()}"}
    result = subprocess.run(
        healthcheck_command(), check=False, env=env, capture_output=True, timeout=30
    )
    assert result.returncode != 0
