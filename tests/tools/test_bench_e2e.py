"""``streamer bench e2e --quick --json``: the whole benchmark in a few seconds, as JSON."""

from __future__ import annotations

import json

from tests.tools.support import run_streamer


def test_quick_benchmark_produces_its_json() -> None:
    result = run_streamer("bench", "e2e", "--quick", "--json", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["quick"] is True
    assert report["universe"]["series"] > 0 and report["universe"]["symbols"] > 0
    for run in ("single_json", "batch_msgpack", "ceiling"):
        steps = report[run]["steps"]
        assert steps, run
        # At these low rates nothing may be lost: the service (or the ceiling consumer)
        # accounts for every tick the publisher sent.
        assert all(s["sent"] > 0 and s["lost"] == 0 and s["processed"] == s["sent"]
                   for s in steps), steps  # fmt: skip
    latency = report["latency"]
    assert latency["ticks"] > 0
    assert latency["end_to_end_ms"]["samples"] > 0 and latency["end_to_end_ms"]["p50"] > 0
    assert latency["service_ms"]["samples"] > 0
    # The floor forwarder published a level for the paced ticks, each carrying its stamp.
    floor = report["latency_floor"]
    assert floor["ticks"] > 0 and floor["end_to_end_ms"]["samples"] >= floor["ticks"] * 0.9
    assert report["service_peak_rss_mb"] > 10
    assert set(report["targets"]) == {
        "single_json_ticks_per_s", "ratio_to_ceiling", "batch_msgpack_ticks_per_s",
        "p99_ms_at_5000",
    }  # fmt: skip


def test_table_output_names_every_measurement() -> None:
    result = run_streamer("bench", "e2e", "--help")
    assert result.returncode == 0
    assert "--quick" in result.stdout and "--json" in result.stdout
