"""``streamer bench gateway --quick --json``: the report's shape, never its timings."""

from __future__ import annotations

import json

from tests.tools.support import run_streamer


def test_quick_gateway_benchmark_reports_every_measurement() -> None:
    result = run_streamer("bench", "gateway", "--quick", "--json", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["quick"] is True
    shape = report["shape"]
    assert report["clients_connected"] == shape["clients"] and report["clients_failed"] == 0
    assert report["published_levels"] > 0 and report["events_received"] > 0
    for path in ("gateway_ms", "direct_redis_ms"):
        latency = report[path]
        assert latency["samples"] > 0, path
        assert set(latency) == {"p50", "p99", "p999", "max", "samples"}
        assert latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    assert report["gateway_cpu_pct"] >= 0 and report["load_cpu_pct"] >= 0
    assert report["gateway_rss_mb"] > 10 and report["gateway_peak_rss_mb"] >= 1
    assert report["errors"] == []


def test_bench_gateway_refuses_nonsense() -> None:
    result = run_streamer("bench", "gateway", "--clients", "0")
    assert result.returncode == 2
    assert "counts must be >= 1" in result.stdout
