"""The Prometheus config and alerting rules, checked and unit-tested with promtool."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.deploy.support import (
    ALERTS,
    PROMETHEUS_DIR,
    PROMETHEUS_SYNTHETIC,
    alert_rules,
    exported_series_names,
    load_yaml,
    promql_metric_names,
    tool,
)

RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(
        [tool("promtool"), *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_prometheus_config_is_valid_and_loads_the_alerts() -> None:
    output = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output


def test_alert_rules_are_valid() -> None:
    output = promtool("check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


@pytest.mark.parametrize("rule_test", RULE_TESTS, ids=[p.stem for p in RULE_TESTS])
def test_rule_unit_tests_pass(rule_test: Path) -> None:
    promtool("test", "rules", str(rule_test.relative_to(PROMETHEUS_DIR)))


def _alert_cases() -> dict[str, dict[str, int]]:
    """alert -> how many evaluations expect it firing and how many expect it silent."""
    cases: dict[str, dict[str, int]] = {}
    for path in RULE_TESTS:
        suite: dict[str, Any] = load_yaml(path)
        assert suite["rule_files"] == ["../alerts.yml"], f"{path.name} must test alerts.yml"
        for test in suite["tests"]:
            for check in test.get("alert_rule_test", []):
                counts = cases.setdefault(check["alertname"], {"firing": 0, "silent": 0})
                counts["firing" if check.get("exp_alerts") else "silent"] += 1
    return cases


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    cases = _alert_cases()
    names = [rule["alert"] for rule in alert_rules()]
    for name in names:
        assert cases.get(name, {}).get("firing"), f"no promtool test expects {name} to fire"
        assert cases.get(name, {}).get("silent"), f"no promtool test expects {name} to stay silent"
    unknown = set(cases) - set(names)
    assert not unknown, f"tests for alerts that do not exist: {sorted(unknown)}"


def test_alerts_cover_the_issue_list() -> None:
    # Feed stale, latency SLO, reference deviation, rejections, Redis errors, MQTT reconnect
    # storms, stale-constituent ratio: the signals operators asked for, by metric.
    selected = {name for rule in alert_rules() for name in promql_metric_names(rule["expr"])}
    for metric in (
        "streamer_ticks_total",
        "streamer_tick_to_publish_seconds_bucket",
        "streamer_reference_deviation_bps",
        "streamer_redis_errors_total",
        "streamer_mqtt_reconnects_total",
        "streamer_stale_constituents",
        # Ingest lag, Redis refusing writes, stale checkpoints, lost sessions, rejected actions.
        "streamer_ingest_lag_seconds",
        "streamer_redis_state",
        "streamer_checkpoint_age_seconds",
        "streamer_mqtt_session_lost_total",
        "streamer_actions_total",
    ):
        assert metric in selected, f"no alert watches {metric}"


def test_alerts_select_only_metrics_the_service_exports() -> None:
    exported = exported_series_names() | PROMETHEUS_SYNTHETIC
    for rule in alert_rules():
        unknown = promql_metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} selects metrics nobody exports: {sorted(unknown)}"


def test_every_alert_is_labelled_and_explained() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]


def test_metric_names_pass_promtool_check_metrics() -> None:
    from prometheus_client import generate_latest

    from streamer.engine.results import SeriesTable
    from streamer.metrics import Metrics
    from streamer.series_metrics import SeriesMetrics

    metrics = Metrics()
    # Children of labelled metrics, so that every family has samples to lint.
    metrics.ticks.labels("accepted", "ok").inc()
    series = SeriesMetrics(["X", "X.TR"])
    series.closed("X", 1_763_700_000.0)
    table = SeriesTable(
        ["X", "X.TR"],
        np.array([1.0, 2.0]),
        np.array([1.5, np.nan]),
        np.array([0, 0]),
        np.array([3, 3]),
        np.array([0.5, np.nan]),
    )
    asyncio.run(series.refresh(table))
    exposition = generate_latest(metrics.registry) + series.text()
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        check=False,
        input=exposition,
        capture_output=True,
        timeout=60,
    )
    problems = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, problems
